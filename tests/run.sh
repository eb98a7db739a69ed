#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, checks the
# formatting and lints, builds every binary and runs every test against real
# Milvus servers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash deploy/local/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
