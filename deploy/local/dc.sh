#!/usr/bin/env bash
# Lose and regain a datacenter of the local demo:
#   dc.sh kill DC    SIGKILL its Milvus and its agent (a datacenter lost at once)
#   dc.sh stop DC    SIGTERM both (an orderly shutdown)
#   dc.sh start DC   start both again, Milvus on its own ports and data, the
#                    agent with its config and state (epoch, capture base)
# With dc-a lost, the witnesses fail over to dc-b (fast profile: ~6 s) and
# its agent moves milvus.demo.test. After `dc.sh start dc-a`, dc-a follows
# dc-b as a demoted standby: `drctl verify`, then `drctl witness
# mark-resynced dc-a` and `drctl witness switchover --to dc-a` fail back.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
demo="${DEMO_DIR:-$root/.local/demo}"
usage() { echo "usage: deploy/local/dc.sh kill|stop|start dc-a|dc-b" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1 dc=$2
case "$dc" in dc-a|dc-b) ;; *) usage ;; esac
[ -f "$demo/state.json" ] || { echo "dc: no demo running (deploy/local/up.sh starts one)" >&2; exit 1; }
state="$demo/state.json"
# The venv and binaries the demo was started with.
venv=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['venv'])" "$state")
bin=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['bin'])" "$state")
get() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(s[sys.argv[2]][sys.argv[3]][sys.argv[4]])" "$state" "$@"; }
set_pid() { python3 - "$state" "$@" <<'PY'
import json, sys
p, kind, dc, pid = sys.argv[1:]
s = json.load(open(p)); s[kind][dc]["pid"] = int(pid)
if kind == "agents":  # a new metrics port (it listens on port 0)
    import os.path
    b = json.load(open(os.path.join(os.path.dirname(p), f"state-{dc}", "bound.json")))
    s[kind][dc]["metrics"] = f"http://{b['metrics']}/metrics"
json.dump(s, open(p + ".tmp", "w"), indent=2)
import os; os.replace(p + ".tmp", p)
PY
}
alive() { [ -e "/proc/$1" ]; }
wait_gone() { for _ in $(seq 1 200); do alive "$1" || return 0; sleep 0.1; done; kill -KILL "$1" 2>/dev/null || true; }

case "$action" in
  kill|stop)
    sig=$([ "$action" = kill ] && echo KILL || echo TERM)
    for kind in agents milvus; do
      pid=$(get "$kind" "$dc" pid)
      if alive "$pid"; then kill -"$sig" "$pid"; wait_gone "$pid"; echo "dc: $dc $kind (pid $pid) ${action}ed"; else echo "dc: $dc $kind was not running"; fi
    done
    ;;
  start)
    pid=$(get milvus "$dc" pid)
    if alive "$pid"; then
      echo "dc: $dc Milvus already running (pid $pid)"
    else
      rm -f "$demo/milvus-$dc/server.json"
      setsid nohup "$venv/bin/python" deploy/local/milvus_server.py --data-dir "$demo/milvus-$dc" --reuse-ports \
        >> "$demo/milvus-$dc/launcher.log" 2>&1 < /dev/null &
      for _ in $(seq 1 600); do [ -s "$demo/milvus-$dc/server.json" ] && break; sleep 0.1; done
      [ -s "$demo/milvus-$dc/server.json" ] || { echo "dc: $dc Milvus did not start (see $demo/milvus-$dc/launcher.log)" >&2; exit 1; }
      pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pid'])" "$demo/milvus-$dc/server.json")
      set_pid milvus "$dc" "$pid"
      healthz=$(get milvus "$dc" healthz)
      echo "dc: $dc Milvus starting (pid $pid); a restart on existing data can take 1-3 min"
      for _ in $(seq 1 1500); do curl -sf "$healthz" >/dev/null && break; sleep 0.2; done
      curl -sf "$healthz" >/dev/null || { echo "dc: $dc Milvus not healthy after 5 min (see $demo/milvus-$dc/logs)" >&2; exit 1; }
      echo "dc: $dc Milvus healthy"
    fi
    pid=$(get agents "$dc" pid)
    if alive "$pid"; then
      echo "dc: $dc agent already running (pid $pid)"
    else
      rm -f "$demo/state-$dc/bound.json"
      setsid nohup "$bin/dr-agent" --config "$demo/agent-$dc.yaml" >> "$demo/agent-$dc.log" 2>&1 < /dev/null &
      for _ in $(seq 1 600); do [ -s "$demo/state-$dc/bound.json" ] && break; sleep 0.1; done
      [ -s "$demo/state-$dc/bound.json" ] || { echo "dc: $dc agent did not start (see $demo/agent-$dc.log)" >&2; exit 1; }
      pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pid'])" "$demo/state-$dc/bound.json")
      set_pid agents "$dc" "$pid"
      echo "dc: $dc agent running (pid $pid)"
    fi
    "$bin/drctl" --config "$demo/drctl.yaml" status || true
    ;;
  *) usage ;;
esac
