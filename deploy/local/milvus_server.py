#!/usr/bin/env python3
"""Start one real Milvus 2.3 standalone server on free ports.

Uses the server binary shipped by the PyPI package `milvus` (2.3.5). Every
port Milvus listens on is chosen free (gRPC proxy, management/healthz HTTP,
internal component ports, and the embedded etcd's client and peer ports),
all state lives under --data-dir, and the graceful stop timeout is a few
seconds. It writes a JSON file describing the server, then *execs* the
Milvus binary: the pid in that file is the Milvus process itself, so a
supervisor's SIGTERM/SIGKILL leaves nothing behind.

The JSON file means "ports chosen", not "healthy": poll
GET http://127.0.0.1:<http_port>/healthz until it answers OK.

Usage: milvus_server.py --data-dir DIR [--ready-file FILE] [--die-with-parent] [--reuse-ports]

With --reuse-ports, a server restarted on a data directory listens on the
ports it had (kept in DIR/ports.json), so its clients' configs stay true.
"""

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import sys

import milvus  # the PyPI package: binaries and config template

# Template keys (see the package's data/config.yaml.template) that are ports.
PORT_KEYS = [
    "proxy_port",
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "etcd_port",
]


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open until all are chosen)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def binary_dir():
    """Extract the shipped binaries once, next to the package (shared by all servers)."""
    base = os.environ.get(
        "MILVUS_DR_MILVUS_BIN",
        os.path.join(os.path.dirname(os.path.abspath(milvus.__file__)), "_extracted"),
    )
    milvus._initialize_data_files(base)  # idempotent: skips files whose md5 matches
    return os.path.join(base, "bin")


def render(template, values):
    """Fill `{{ key(type): default }}` / `{{ key }}` placeholders."""

    def sub(m):
        key = m.group(1)
        if key in values:
            return str(values[key])
        if m.group(3) is not None:
            return m.group(3).strip()
        raise KeyError(f"no value for template key {key}")

    return re.sub(r"\{\{\s*([a-zA-Z0-9_]+)(\([a-z]+\))?\s*(?::([^}]*))?\}\}", sub, template)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--die-with-parent", action="store_true",
                    help="SIGKILL the server when the process that started it exits")
    ap.add_argument("--graceful-stop-seconds", type=int, default=3)
    ap.add_argument("--reuse-ports", action="store_true",
                    help="listen on the ports of the previous start on this data directory")
    args = ap.parse_args()

    data = os.path.abspath(args.data_dir)
    for sub in ("configs", "logs", "storage", "run"):
        os.makedirs(os.path.join(data, sub), exist_ok=True)
    bindir = binary_dir()

    names = PORT_KEYS + ["etcd_peer_port", "http_port"]
    kept = os.path.join(data, "ports.json")
    ports = None
    if args.reuse_ports and os.path.exists(kept):
        with open(kept, encoding="utf-8") as f:
            ports = json.load(f)
        if sorted(ports) != sorted(names):
            ports = None
    if ports is None:
        ports = dict(zip(names, free_ports(len(names))))
        with open(kept, "w", encoding="utf-8") as f:
            json.dump(ports, f)
    storage = os.path.join(data, "storage")
    values = dict(ports)
    values.update({
        "etcd_log_level": "warn",
        "etcd_log_path": os.path.join(data, "logs", "etcd.log"),
        "etcd_data_dir": os.path.join(storage, "etcd.data"),
        "local_storage_dir": os.path.join(storage, "data"),
        "rocksmq_data_dir": os.path.join(storage, "rdb_data"),
        "system_log_path": os.path.join(data, "logs"),
    })
    tpl_path = os.path.join(os.path.dirname(os.path.abspath(milvus.__file__)), "data", "config.yaml.template")
    with open(tpl_path, encoding="utf-8") as f:
        text = render(f.read(), values)

    # The embedded etcd binds 2379/2380 unless given its own config file.
    etcd_yaml = os.path.join(data, "configs", "embed-etcd.yaml")
    cp, pp = ports["etcd_port"], ports["etcd_peer_port"]
    with open(etcd_yaml, "w", encoding="utf-8") as f:
        f.write(
            "name: default\n"
            f"data-dir: {os.path.join(storage, 'etcd.data')}\n"
            f"listen-client-urls: http://127.0.0.1:{cp}\n"
            f"advertise-client-urls: http://127.0.0.1:{cp}\n"
            f"listen-peer-urls: http://127.0.0.1:{pp}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{pp}\n"
            f"initial-cluster: default=http://127.0.0.1:{pp}\n"
        )
    text = text.replace(
        "  use:\n    embed: true",
        f"  config:\n    path: {etcd_yaml}\n  use:\n    embed: true",
        1,
    )
    if f"path: {etcd_yaml}" not in text:
        sys.exit("milvus_server.py: could not place etcd.config.path in the config template")
    text = re.sub(r"gracefulStopTimeout: \d+", f"gracefulStopTimeout: {args.graceful_stop_seconds}", text)
    text = text.replace("localhost:", "127.0.0.1:")
    with open(os.path.join(data, "configs", "milvus.yaml"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(data, "configs", "glog.conf"), "w", encoding="utf-8") as f:
        f.write(f"--log_dir={os.path.join(data, 'logs')}\n--minloglevel=1\n")

    env = dict(os.environ)
    env.update({
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(ports["http_port"]),
        "MILVUS_RUN_DIR": os.path.join(data, "run"),
        "MILVUSCONF": os.path.join(data, "configs"),
        "LD_LIBRARY_PATH": bindir + ":" + env.get("LD_LIBRARY_PATH", ""),
    })
    info = {
        "pid": os.getpid(),  # exec keeps the pid
        "grpc_port": ports["proxy_port"],
        "http_port": ports["http_port"],
        "etcd_client_port": cp,
        "etcd_peer_port": pp,
        "data_dir": data,
        "config": os.path.join(data, "configs", "milvus.yaml"),
        "logs": os.path.join(data, "logs"),
    }
    ready = args.ready_file or os.path.join(data, "server.json")
    tmp = ready + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, ready)

    if args.die_with_parent:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent already died
            sys.exit(1)
    out = os.open(os.path.join(data, "logs", "milvus-stdout.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.chdir(data)
    exe = os.path.join(bindir, "milvus")
    os.execve(exe, [exe, "run", "standalone"], env)


if __name__ == "__main__":
    main()
