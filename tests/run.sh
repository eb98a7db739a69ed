#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, checks the
# deployment kits (deploy/check.sh), the formatting and lints, builds every
# binary and runs every test against real Milvus servers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash deploy/local/setup.sh
bash deploy/check.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked

# Every test binary runs (no fail-fast); the last line sums them all, as
# "N passed, N failed", and a run that passed nothing fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
read -r passed failed < <(awk '/^test result:/ {
    for (i = 2; i <= NF; i++) {
        if ($i ~ /^passed;?$/) p += $(i - 1)
        if ($i ~ /^failed;?$/) f += $(i - 1)
    }
} END { print p + 0, f + 0 }' "$log")
echo "$passed passed, $failed failed"
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
if [ "$passed" -eq 0 ]; then
  echo "no test passed: something is wrong with the test run" >&2
  exit 1
fi
