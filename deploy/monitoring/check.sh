#!/usr/bin/env bash
# Checks deploy/monitoring: the alert rules load (`promtool check rules`),
# their unit tests pass (`promtool test rules`), the example scrape config
# loads, every dashboard query parses, and metrics.txt is exactly the list of
# milvus_dr_* names that rules.yml and the dashboard use (names.py).
#
# Installs promtool (Debian package `prometheus`, /usr/bin/promtool) and
# PyYAML (`python3-yaml`) with apt-get when they are missing; PROMTOOL=path
# uses another promtool. Exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

log() { printf '== %s\n' "$*"; }

apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo -n)
    else
      echo "check.sh: need root (or sudo) to apt-get install $*;" \
        "or set PROMTOOL=/path/to/promtool" >&2
      return 1
    fi
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get
    -y -q -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold install --no-install-recommends "$@")
  log "apt-get install $*"
  local out
  out=$(mktemp)
  # Stale or missing package lists: update once, then try again.
  if ! "${apt[@]}" >"$out" 2>&1; then
    if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q update &&
      "${apt[@]}"; } >"$out" 2>&1; then
      cat "$out" >&2
      rm -f "$out"
      echo "check.sh: apt-get install $* failed" >&2
      return 1
    fi
  fi
  rm -f "$out"
}

# promtool: PROMTOOL, or on PATH, or from the Debian package `prometheus`.
# (In a container with policy-rc.d the package's service does not start; on
# a systemd host it does: there, install promtool yourself and set PROMTOOL.)
promtool=${PROMTOOL:-}
if [ -z "$promtool" ]; then
  if ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus
  fi
  promtool=$(command -v promtool)
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import yaml' 2>/dev/null; then
  apt_install python3-yaml
  python=/usr/bin/python3
fi

log "$("$promtool" --version 2>&1 | head -n1)"

log "promtool check rules rules.yml"
"$promtool" check rules rules.yml

log "promtool test rules rules_test.yml"
"$promtool" test rules rules_test.yml

log "promtool check config prometheus.example.yml"
"$promtool" check config --syntax-only prometheus.example.yml

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

log "dashboard queries parse (grafana/milvus-dr.json)"
"$python" names.py --dashboard-rules >"$tmp/dashboard_rules.yml"
"$promtool" check rules "$tmp/dashboard_rules.yml"

log "metrics.txt matches names.py"
"$python" names.py >"$tmp/metrics.txt"
if ! diff -u metrics.txt "$tmp/metrics.txt"; then
  echo "check.sh: metrics.txt is out of date; regenerate it:" >&2
  echo "  python3 deploy/monitoring/names.py > deploy/monitoring/metrics.txt" >&2
  exit 1
fi
log "$(wc -l <metrics.txt) metric names"

# Runbook anchors (a warning: the README's runbook may lag the rules).
missing=$("$python" names.py --missing-runbooks ../../README.md || true)
if [ -n "$missing" ]; then
  echo "warning: README.md has no runbook heading for:" >&2
  printf '  %s\n' $missing >&2
fi
log "OK"
