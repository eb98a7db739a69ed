#!/usr/bin/env bash
# Stops the local demo: agents first (SIGTERM), then BIND, the S3 store, the
# witnesses and the Milvus servers;
# SIGKILL for anything still running after 20 s. Keeps the data unless
# --purge is given.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
demo="${DEMO_DIR:-$root/.local/demo}"
if [ ! -f "$demo/state.json" ]; then
  echo "down: no demo running"
  [ "${1:-}" = "--purge" ] && rm -rf "$demo" && echo "down: purged $demo"
  exit 0
fi
pids() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(' '.join(str(p['pid']) for p in s.get(sys.argv[2], {}).values()))" "$demo/state.json" "$1"; }
stop() {
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 200); do
    alive=0; for p in "$@"; do [ -e "/proc/$p" ] && alive=1; done
    [ $alive = 0 ] && return 0; sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}
stop $(pids agents)
stop $(pids dns)
stop $(pids s3)
stop $(pids witnesses)
stop $(pids milvus)
rm -f "$demo/state.json"
[ "${1:-}" = "--purge" ] && rm -rf "$demo"
echo "down: stopped"
