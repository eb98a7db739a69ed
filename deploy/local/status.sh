#!/usr/bin/env bash
# Shows the local demo's processes and `drctl status`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
demo="${DEMO_DIR:-$root/.local/demo}"
target="${CARGO_TARGET_DIR:-$root/target}"
[ -f "$demo/state.json" ] || { echo "no demo running (no $demo/state.json)"; exit 1; }
python3 - "$demo/state.json" <<'PY'
import json, os, sys
s = json.load(open(sys.argv[1]))
for kind in ("milvus", "witnesses", "agents", "s3", "dns"):
    for dc, p in s.get(kind, {}).items():
        alive = os.path.exists(f"/proc/{p['pid']}")
        print(f"{kind:<9} {dc:<5}  pid {p['pid']:<8} {'up  ' if alive else 'DOWN'}  {p.get('grpc') or p.get('endpoint')}")
PY
"$target/release/drctl" --config "$demo/drctl.yaml" status
