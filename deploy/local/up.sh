#!/usr/bin/env bash
# Local demo: two real Milvus servers (dc-a primary, dc-b standby), three
# dr-witnesses (the Raft quorum, fast failover profile), two dr-agents and
# BIND 9 serving the service name milvus.demo.test (switched by the agents),
# all on free loopback ports with mutual TLS; clients go through the
# agents' front doors (milvus.demo.test:PORT); sample data and a mixed
# workload on the primary, then `drctl status`, `drctl verify`, a backup to
# a local S3 store (s3s-fs) and a failover drill (DEMO_DRILL=0 skips it).
# Everything stays running; state and logs live in .local/demo (or
# $DEMO_DIR). Stop it with deploy/local/down.sh; run up.sh again to resume
# it as it was (same ports, data, epoch and primary); down.sh --purge
# forgets it. deploy/local/dc.sh kill|stop|start DC loses and regains a
# datacenter.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
demo="${DEMO_DIR:-$root/.local/demo}"
venv="${MILVUS_DR_VENV:-$root/.venv}"
export MILVUS_DR_VENV="$venv"
target="${CARGO_TARGET_DIR:-$root/target}"

if [ -f "$demo/state.json" ]; then
  echo "up: a demo is already running (or was not stopped): run deploy/local/down.sh first" >&2
  exit 1
fi
bash deploy/local/setup.sh
echo "up: building (release)"
cargo build --release --locked -q -p dr-agent -p dr-witness -p dr-tests --bins
bin="$target/release"
mkdir -p "$demo"

# If anything fails, stop what this run started (no half-running demo).
started=()
cleanup() { [ ${#started[@]} -gt 0 ] && kill "${started[@]}" 2>/dev/null; echo "up: failed; stopped what was started (logs stay in $demo)" >&2; }
trap cleanup ERR

wait_file() { for _ in $(seq 1 600); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "up: $1 never appeared" >&2; return 1; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# A demo stopped by down.sh (data kept) resumes on the same ports.
resume=0
[ -s "$demo/ports.env" ] && resume=1 && echo "up: resuming the demo in $demo (data, ports, epoch and primary as they were)"
for dc in dc-a dc-b; do
  mkdir -p "$demo/milvus-$dc"
  rm -f "$demo/milvus-$dc/server.json"
  setsid nohup "$venv/bin/python" deploy/local/milvus_server.py --data-dir "$demo/milvus-$dc" --reuse-ports \
    > "$demo/milvus-$dc/launcher.log" 2>&1 < /dev/null &
  started+=($!)
done
for dc in dc-a dc-b; do
  wait_file "$demo/milvus-$dc/server.json"
  port=$(json "$demo/milvus-$dc/server.json" http_port)
  # A restart on existing data waits for the old session to expire (~1-3 min).
  for _ in $(seq 1 1500); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { echo "up: Milvus $dc not healthy" >&2; exit 1; }
  echo "up: Milvus $dc healthy on grpc port $(json "$demo/milvus-$dc/server.json" grpc_port)"
done

[ -f "$demo/certs/ca.pem" ] || "$bin/drctl" certs init --out "$demo/certs" >/dev/null
a_grpc=$(json "$demo/milvus-dc-a/server.json" grpc_port); a_http=$(json "$demo/milvus-dc-a/server.json" http_port)
b_grpc=$(json "$demo/milvus-dc-b/server.json" grpc_port); b_http=$(json "$demo/milvus-dc-b/server.json" http_port)

# Free loopback ports for 3 witnesses, 2 agents and the DNS server (UDP
# and TCP both free for that one), kept for a resume.
if [ "$resume" = 1 ]; then
  . "$demo/ports.env"
else
read -r w1 w2 w3 a_port b_port dns_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", u.getsockname()[1])); break
    except OSError:
        u.close(); t.close()
print(" ".join(str(s.getsockname()[1]) for s in socks), u.getsockname()[1])
for s in socks + [u, t]: s.close()
PY
)
printf 'w1=%s w2=%s w3=%s a_port=%s b_port=%s dns_port=%s\n' "$w1" "$w2" "$w3" "$a_port" "$b_port" "$dns_port" > "$demo/ports.env"
fi
# The front doors: each datacenter's agent serves the Milvus API on its own
# loopback address (dc-a 127.0.0.11, dc-b 127.0.0.12) and the same port, as
# in production, so a client of milvus.demo.test:PORT follows the primary.
if [ -z "${door_port:-}" ]; then
door_port=$(python3 - <<'PY'
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.11", 0)); port = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.12", port)); break
    except OSError:
        a.close(); b.close()
print(port)
a.close(); b.close()
PY
)
echo "door_port=$door_port" >> "$demo/ports.env"
fi
A_ADDR="https://127.0.0.1:$a_port"; B_ADDR="https://127.0.0.1:$b_port"
witnesses="{ 1: \"https://127.0.0.1:$w1\", 2: \"https://127.0.0.1:$w2\", 3: \"https://127.0.0.1:$w3\" }"
failover="{ profile: fast }"

for id in 1 2 3; do
  port_var="w$id"
  cat > "$demo/witness-$id.yaml" <<YAML
id: $id
state_dir: witness-$id
listen: { grpc: "127.0.0.1:${!port_var}", metrics: "127.0.0.1:0" }
witnesses: $witnesses
datacenters:
  dc-a: { health_url: "http://127.0.0.1:$a_http/healthz" }
  dc-b: { health_url: "http://127.0.0.1:$b_http/healthz" }
initial_primary: dc-a
tls: { ca: certs/ca.pem, cert: certs/witness-$id.pem, key: certs/witness-$id.key }
failover: $failover
YAML
  "$bin/dr-witness" --config "$demo/witness-$id.yaml" --check >/dev/null
  rm -f "$demo/witness-$id/bound.json"
  setsid nohup "$bin/dr-witness" --config "$demo/witness-$id.yaml" > "$demo/witness-$id.log" 2>&1 < /dev/null &
  started+=($!)
done
for id in 1 2 3; do wait_file "$demo/witness-$id/bound.json"; done
echo "up: witnesses running on ports $w1 $w2 $w3"

# The service name: BIND 9, authoritative for demo.test, which the agents
# switch by RFC 2136 (TSIG-signed compare-and-swap). Each datacenter has
# its own loopback address (dc-a 127.0.0.11, dc-b 127.0.0.12), so the
# record's value really changes; behind it is that datacenter's front door.
mkdir -p "$demo/dns"
[ -s "$demo/dns/dr-key.key" ] || /usr/sbin/tsig-keygen -a hmac-sha256 dr-key > "$demo/dns/dr-key.key"
[ -s "$demo/dns/demo.test.zone" ] || printf '$TTL 60\n@ IN SOA ns.demo.test. admin.demo.test. 1 60 60 600 5\n@ IN NS ns.demo.test.\nns IN A 127.0.0.1\n' > "$demo/dns/demo.test.zone"
cat > "$demo/dns/named.conf" <<CONF
options {
    directory "$demo/dns";
    pid-file "$demo/dns/named.pid";
    listen-on port $dns_port { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    dnssec-validation no;
    notify no;
};
controls { };
include "$demo/dns/dr-key.key";
zone "demo.test" {
    type primary;
    file "$demo/dns/demo.test.zone";
    update-policy { grant dr-key zonesub ANY; };
};
CONF
setsid nohup /usr/sbin/named -g -u root -c "$demo/dns/named.conf" > "$demo/dns/named.log" 2>&1 < /dev/null &
started+=($!)
echo $! > "$demo/dns/pid"
for _ in $(seq 1 300); do dig +short +time=1 +tries=1 @127.0.0.1 -p "$dns_port" demo.test SOA 2>/dev/null | grep -q . && break; sleep 0.1; done
dig +short +time=1 +tries=1 @127.0.0.1 -p "$dns_port" demo.test SOA | grep -q . || { echo "up: BIND did not start (see $demo/dns/named.log)" >&2; exit 1; }
echo "up: BIND 9 serving demo.test on 127.0.0.1:$dns_port"

# The backup store: a real S3 protocol server (s3s-fs) over a local folder.
rm -f "$demo/s3/bound.json"
setsid nohup "$bin/s3-server" --root "$demo/s3/data" --bound "$demo/s3/bound.json" > "$demo/s3.log" 2>&1 < /dev/null &
started+=($!)
wait_file "$demo/s3/bound.json"
s3_endpoint=$(json "$demo/s3/bound.json" endpoint)
s3="{ bucket: $(json "$demo/s3/bound.json" bucket), prefix: demo/, endpoint: \"$s3_endpoint\", force_path_style: true, access_key_id_file: \"$(json "$demo/s3/bound.json" access_key_file)\", secret_access_key_file: \"$(json "$demo/s3/bound.json" secret_key_file)\" }"
echo "up: S3 store on $s3_endpoint"

write_config() { # dc, listen port, front door address
  cat > "$demo/agent-$1.yaml" <<YAML
datacenter: $1
initial_primary: dc-a
state_dir: state-$1
datacenters:
  dc-a:
    milvus: { endpoint: "http://127.0.0.1:$a_grpc", health_url: "http://127.0.0.1:$a_http/healthz" }
    agent: "$A_ADDR"
  dc-b:
    milvus: { endpoint: "http://127.0.0.1:$b_grpc", health_url: "http://127.0.0.1:$b_http/healthz" }
    agent: "$B_ADDR"
listen: { grpc: "127.0.0.1:$2", metrics: "127.0.0.1:0" }
tls: { ca: certs/ca.pem, cert: certs/agent.$1.pem, key: certs/agent.$1.key }
replication: { poll_interval: 500ms }
# Clients connect here (through milvus.demo.test), not to Milvus: writes
# are logged and replicated from the change log, and refused unless this
# datacenter is the acting primary.
frontdoor: { listen: "$3:$door_port" }
witnesses: $witnesses
failover: $failover
backup: { enabled: true, schedule: "0 2 * * *", timezone: UTC, retention_days: 30, s3: $s3 }
dns:
  provider: rfc2136
  record: milvus.demo.test.
  ttl: 5
  values: { dc-a: ["127.0.0.11"], dc-b: ["127.0.0.12"] }
  rfc2136: { server: "127.0.0.1:$dns_port", zone: demo.test., tsig_key_file: "$demo/dns/dr-key.key" }
YAML
}
start_agent() { # dc
  "$bin/dr-agent" --config "$demo/agent-$1.yaml" --check >/dev/null
  rm -f "$demo/state-$1/bound.json"
  setsid nohup "$bin/dr-agent" --config "$demo/agent-$1.yaml" > "$demo/agent-$1.log" 2>&1 < /dev/null &
  started+=($!)
  wait_file "$demo/state-$1/bound.json"
}
write_config dc-b "$b_port" 127.0.0.12
write_config dc-a "$a_port" 127.0.0.11
start_agent dc-b
start_agent dc-a

cat > "$demo/drctl.yaml" <<YAML
agents:
  dc-a: { address: "$A_ADDR" }
  dc-b: { address: "$B_ADDR" }
witnesses: $witnesses
tls: { ca: certs/ca.pem, cert: certs/operator.pem, key: certs/operator.key }
drill: { dir: drills, rto_target_ms: 10000, rpo_target_ms: 1000 }
YAML

python3 - "$demo" "$dns_port" "$venv" "$bin" <<'PY'
import json, sys, os
d = sys.argv[1]
def j(p): return json.load(open(os.path.join(d, p)))
state = {"milvus": {}, "witnesses": {}, "agents": {}, "s3": {}, "dns": {}, "drctl_config": os.path.join(d, "drctl.yaml"), "venv": sys.argv[3], "bin": sys.argv[4]}
state["dns"]["bind"] = {"pid": int(open(os.path.join(d, "dns/pid")).read()), "endpoint": f"127.0.0.1:{sys.argv[2]}", "zone": "demo.test.", "name": "milvus.demo.test.", "values": {"dc-a": "127.0.0.11", "dc-b": "127.0.0.12"}, "log": os.path.join(d, "dns/named.log")}
s3 = j("s3/bound.json")
state["s3"]["store"] = {"pid": s3["pid"], "endpoint": s3["endpoint"], "bucket": s3["bucket"], "log": os.path.join(d, "s3.log")}
for i in (1, 2, 3):
    b = j(f"witness-{i}/bound.json")
    state["witnesses"][str(i)] = {"pid": b["pid"], "grpc": b["grpc"], "metrics": f"http://{b['metrics']}/metrics", "log": os.path.join(d, f"witness-{i}.log")}
for dc in ("dc-a", "dc-b"):
    m = j(f"milvus-{dc}/server.json")
    state["milvus"][dc] = {"pid": m["pid"], "grpc": f"127.0.0.1:{m['grpc_port']}", "healthz": f"http://127.0.0.1:{m['http_port']}/healthz", "data_dir": m["data_dir"]}
    b = j(f"state-{dc}/bound.json")
    state["agents"][dc] = {"pid": b["pid"], "grpc": b["grpc"], "metrics": f"http://{b['metrics']}/metrics", "config": os.path.join(d, f"agent-{dc}.yaml"), "log": os.path.join(d, f"agent-{dc}.log")}
json.dump(state, open(os.path.join(d, "state.json"), "w"), indent=2)
PY
trap - ERR
echo "up: agents running; state in $demo/state.json"
# The primary is whoever the witnesses say (after a resume, maybe dc-b):
# wait until its agent acts, then write only there.
primary=""
for _ in $(seq 1 1200); do
  primary=$("$bin/drctl" --config "$demo/drctl.yaml" status --json 2>/dev/null | python3 -c "import json,sys; print(next((a['datacenter'] for a in json.load(sys.stdin)['agents'] if a.get('role') == 'source'), ''))" 2>/dev/null || true)
  [ -n "$primary" ] && break
  sleep 0.1
done
[ -n "$primary" ] || { echo "up: no agent acts as primary after 120 s; see drctl witness status and the agents' logs" >&2; exit 1; }
want=$([ "$primary" = dc-b ] && echo 127.0.0.12 || echo 127.0.0.11)
for _ in $(seq 1 300); do [ "$(dig +short @127.0.0.1 -p "$dns_port" milvus.demo.test A)" = "$want" ] && break; sleep 0.1; done
echo "up: milvus.demo.test -> $(dig +short @127.0.0.1 -p "$dns_port" milvus.demo.test A) ($primary is primary, switched by its agent)"
echo "up: front doors on 127.0.0.11:$door_port (dc-a) and 127.0.0.12:$door_port (dc-b): clients use milvus.demo.test:$door_port"

echo "up: loading sample data and running a mixed workload through the primary's front door ($primary)"
"$bin/demo-workload" --endpoint "http://$want:$door_port" --database demo --rows "${DEMO_ROWS:-20000}" --seconds "${DEMO_SECONDS:-15}"
echo
"$bin/drctl" --config "$demo/drctl.yaml" status
echo
"$bin/drctl" --config "$demo/drctl.yaml" verify --settle 120s
echo
echo "up: a backup of the primary to S3 (Parquet + manifest), verified after writing"
"$bin/drctl" backup --agent-config "$demo/agent-$primary.yaml" create
"$bin/drctl" backup --agent-config "$demo/agent-$primary.yaml" list
echo
if [ "${DEMO_DRILL:-1}" = 1 ]; then
  echo "up: a failover drill: $primary's Milvus counts as dead until the witnesses fail over; every step timed"
  "$bin/drctl" --config "$demo/drctl.yaml" drill failover || echo "up: the drill did not pass (see above)"
  echo
fi
echo
echo "up: demo running. Try:"
echo "  $bin/drctl --config $demo/drctl.yaml status"
echo "  curl -s \$(python3 -c \"import json;print(json.load(open('$demo/state.json'))['agents']['dc-b']['metrics'])\") | grep lag"
echo "  $bin/drctl --config $demo/drctl.yaml witness status"
echo "  $bin/drctl --config $demo/drctl.yaml witness switchover --to dc-b     # planned, loses nothing"
echo "  dig +short @127.0.0.1 -p $dns_port milvus.demo.test A                 # the service name follows the primary"
echo "  $venv/bin/python -c \"from pymilvus import MilvusClient as M; c = M(uri='http://127.0.0.12:$door_port', db_name='demo'); print(c.list_collections()); c.delete('products', ids=[1])\"   # a standby's front door (dc-b's while dc-a is primary) serves reads and refuses writes, naming the primary"
echo "  $bin/drctl --config $demo/drctl.yaml drill list                         # kept drill reports (drill show ID)"
echo "  bash deploy/local/dc.sh kill dc-a                                          # lose a datacenter (Milvus + agent, SIGKILL); dc.sh start dc-a brings it back"
echo "  $bin/drctl backup --agent-config $demo/agent-dc-a.yaml list              # backups: verify ID, restore ID --rename-suffix _r, drill, prune --dry-run"
echo "  $bin/drctl backup --agent-config $demo/agent-dc-a.yaml drill             # restore the newest backup under scratch names, check, drop"
echo "  bash deploy/local/down.sh"
