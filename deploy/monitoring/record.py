#!/usr/bin/env python3
"""Record the dashboard's series from running agents and witnesses.

Scrapes every agent's and witness's /metrics once a second (addresses from
the local demo's state.json, or --agent/--witness URLs) and appends one CSV
row per sample: time, process, metric, labels, value. Only the series the
dashboard's role, epoch, lag and witness panels use are kept.

Usage: record.py --state .local/demo/state.json --seconds 180 --out series.csv
"""

import argparse
import csv
import json
import re
import sys
import time
import urllib.request

KEEP = re.compile(
    r"^(milvus_dr_(role|epoch|replication_lag_seconds|milvus_healthy|lease_remaining_seconds)"
    r"|milvus_dr_witness_(epoch|is_leader|primary|datacenter_healthy))\{?"
)
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("#") or not KEEP.match(line):
                continue
            m = LINE.match(line)
            if m:
                yield m.group(1), (m.group(2) or "{}"), float(m.group(3))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", help="the demo's state.json")
    ap.add_argument("--agent", action="append", default=[], help="NAME=URL of an agent's /metrics")
    ap.add_argument("--witness", action="append", default=[], help="NAME=URL of a witness's /metrics")
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fixed = [tuple(a.split("=", 1)) for a in args.agent + args.witness]

    def targets():
        # Re-read every time: a restarted agent listens on a new metrics port.
        out = list(fixed)
        if args.state:
            try:
                s = json.load(open(args.state))
            except (OSError, ValueError):
                return out
            out += [(f"agent {dc}", a["metrics"]) for dc, a in s["agents"].items()]
            out += [(f"witness {i}", w["metrics"]) for i, w in s["witnesses"].items()]
        return out

    if not targets():
        sys.exit("record.py: give --state or --agent/--witness")
    end = time.time() + args.seconds
    with open(args.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["time", "process", "metric", "labels", "value"])
        while time.time() < end:
            t = time.time()
            for name, url in targets():
                try:
                    for metric, labels, value in scrape(url):
                        out.writerow([f"{t:.3f}", name, metric, labels, value])
                except OSError:
                    pass  # a process that is down has no sample: a gap
            f.flush()
            time.sleep(max(0.0, 1.0 - (time.time() - t)))


if __name__ == "__main__":
    main()
