#!/usr/bin/env python3
"""Plot what the dashboard shows, from a record.py CSV: each agent's role
and epoch, replication lag, and each witness's view (leader, healthy
datacenters, primary). Needs matplotlib.

Usage: plot.py series.csv dashboard.png [--marks "t=label" ...]
(marks: seconds since the first sample, e.g. "42=kill dc-a").
"""

import argparse
import csv
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROLES = {"idle": 0, "sink": 1, "fenced": 2, "source": 3}


def labels(s):
    return dict(re.findall(r'(\w+)="([^"]*)"', s))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--marks", nargs="*", default=[])
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    t0 = min(float(r["time"]) for r in rows)
    series = defaultdict(list)  # (panel, name) -> [(t, v)]
    for r in rows:
        t, m, lab, v = float(r["time"]) - t0, r["metric"], labels(r["labels"]), float(r["value"])
        proc = r["process"]
        if m == "milvus_dr_role" and v == 1:
            series[("role", proc)].append((t, ROLES.get(lab.get("role"), -1)))
        elif m == "milvus_dr_epoch":
            series[("epoch", proc)].append((t, v))
        elif m == "milvus_dr_replication_lag_seconds":
            series[("lag", proc)].append((t, v))
        elif m == "milvus_dr_witness_is_leader":
            series[("leader", proc)].append((t, v))
        elif m == "milvus_dr_witness_datacenter_healthy":
            series[("healthy", f"{proc}: {lab.get('datacenter')}")].append((t, v))
        elif m == "milvus_dr_witness_primary" and v == 1:
            series[("primary", proc)].append((t, 0 if lab.get("datacenter") == "dc-a" else 1))
    panels = [
        ("role", "agent role", list(ROLES), list(ROLES.values())),
        ("epoch", "agent epoch", None, None),
        ("lag", "replication lag (s)", None, None),
        ("healthy", "datacenter healthy, per witness", ["down", "up"], [0, 1]),
        ("primary", "primary, per witness", ["dc-a", "dc-b"], [0, 1]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 12), sharex=True)
    for ax, (key, title, ticks, tvals) in zip(axes, panels):
        for (panel, name), pts in sorted(series.items()):
            if panel != key:
                continue
            pts.sort()
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
        ax.set_title(title, loc="left", fontsize=10)
        if ticks:
            ax.set_yticks(tvals)
            ax.set_yticklabels(ticks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=3)
        for m in args.marks:
            at, text = m.split("=", 1)
            ax.axvline(float(at), color="grey", linestyle="--", linewidth=0.8)
            if key == panels[0][0]:
                ax.annotate(text, (float(at), ax.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right")
    axes[-1].set_xlabel("seconds")
    fig.suptitle("milvus-dr: a failover drill, a lost datacenter, its return and failback (local demo)")
    fig.tight_layout()
    fig.savefig(args.png, dpi=90)


if __name__ == "__main__":
    main()
