"""Cross-checks compose.yaml against the milvus-dr configs it mounts.

Reads the fully resolved project (`docker-compose config --format json`) on
stdin. For every service that mounts a milvus-dr config:
  - the config file exists and parses;
  - tls.ca/cert/key are paths the service receives as secrets, and each
    secret's file has the same name as its target;
  - the healthcheck probes listen.metrics' port;
  - every host the config dials (Milvus, peer agent, witnesses) is a service
    that shares a network with this one, on a port that service listens on.
Exit 1 with one line per problem.
"""

import json
import os
import sys
from urllib.parse import urlsplit

import yaml

project = json.load(sys.stdin)
services = project["services"]
secrets = project.get("secrets", {})
problems = []
# service -> (kind, config) for milvus-dr services
dr = {}

for name, svc in services.items():
    for vol in svc.get("volumes", []):
        target = vol.get("target", "")
        if vol.get("type") == "bind" and target.startswith("/etc/milvus-dr/") and target.endswith(".yaml"):
            kind = os.path.basename(target)[: -len(".yaml")]
            src = vol["source"]
            if not os.path.isfile(src):
                problems.append(f"{name}: mounts {src}, which does not exist")
                continue
            with open(src) as f:
                dr[name] = (kind, yaml.safe_load(f), src)


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def listens(name):
    """Ports a service listens on inside the network."""
    if name in dr:
        kind, cfg, _ = dr[name]
        return {port_of(v) for v in cfg.get("listen", {}).values()}
    if name.startswith("milvus-"):
        return {19530, 9091}
    return set()


def reach(name, url, what):
    u = urlsplit(url)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if host not in services:
        problems.append(f"{name}: {what} {url}: no service named {host}")
        return
    shared = set(services[name].get("networks", {})) & set(services[host].get("networks", {}))
    if not shared:
        problems.append(f"{name}: {what} {url}: {host} shares no network with {name}")
    if port not in listens(host):
        problems.append(f"{name}: {what} {url}: {host} does not listen on {port}")


for name, (kind, cfg, src) in sorted(dr.items()):
    svc = services[name]
    targets = {s["target"]: s["source"] for s in svc.get("secrets", [])}
    for key in ("ca", "cert", "key"):
        path = cfg.get("tls", {}).get(key)
        if path not in targets:
            problems.append(f"{name}: tls.{key} {path} is not one of its secrets ({src})")
    for target, source in targets.items():
        file = secrets.get(source, {}).get("file", "")
        if os.path.basename(file) != os.path.basename(target):
            problems.append(f"{name}: secret {source} ({file}) is mounted as {target}")
    if kind in ("agent", "witness"):
        test = svc.get("healthcheck", {}).get("test", [])
        port = str(port_of(cfg["listen"]["metrics"]))
        if port not in test:
            problems.append(f"{name}: healthcheck {test} does not probe listen.metrics port {port}")
    if kind == "agent":
        me = cfg["datacenter"]
        for dc, d in cfg["datacenters"].items():
            reach(name, d["milvus"]["endpoint"], f"datacenters.{dc}.milvus.endpoint")
            reach(name, d["milvus"]["health_url"], f"datacenters.{dc}.milvus.health_url")
            if dc != me:
                reach(name, d["agent"], f"datacenters.{dc}.agent")
        own = urlsplit(cfg["datacenters"][me]["agent"]).hostname
        if own != name:
            problems.append(f"{name}: datacenters.{me}.agent names {own}, not this service")
        for wid, url in cfg.get("witnesses", {}).items():
            reach(name, url, f"witnesses.{wid}")
    elif kind == "witness":
        for dc, d in cfg["datacenters"].items():
            reach(name, d["health_url"], f"datacenters.{dc}.health_url")
        for wid, url in cfg["witnesses"].items():
            if wid == cfg["id"]:
                if urlsplit(url).hostname != name:
                    problems.append(f"{name}: witnesses.{wid} names {url}, not this service")
            else:
                reach(name, url, f"witnesses.{wid}")
    elif kind == "drctl":
        for dc, a in cfg["agents"].items():
            reach(name, a["address"], f"agents.{dc}")
        for wid, url in cfg.get("witnesses", {}).items():
            reach(name, url, f"witnesses.{wid}")

kinds = sorted(k for k, _, _ in dr.values())
if kinds.count("agent") != 2 or kinds.count("witness") != 3:
    problems.append(f"expected 2 agents and 3 witnesses, found {kinds}")

for p in problems:
    print(f"FAIL {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"ok   compose cross-check: {len(dr)} milvus-dr services ({', '.join(sorted(dr))})")
