#!/usr/bin/env python3
"""The milvus_dr_* metric names that rules.yml and the Grafana dashboard use.

    names.py                       print them, sorted, one per line (= metrics.txt)
    names.py --dashboard-rules     the dashboard's queries as a rule file, with
                                   Grafana variables filled in, so that
                                   `promtool check rules` parses every one
    names.py --missing-runbooks README.md
                                   the runbook anchors (runbook_url) that no
                                   heading of README.md produces

Names are the PromQL identifiers starting with `milvus_dr` in the rules'
`expr` and the dashboard's target, variable and annotation queries (string
literals such as label values are skipped). Counters appear as exposed,
with `_total`. The dashboard is also checked for what the names depend on:
the ${DS_PROMETHEUS} data source on every query, unique panel ids.

Needs PyYAML (Debian: python3-yaml).
"""

import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "rules.yml")
DASHBOARD = os.path.join(HERE, "grafana", "milvus-dr.json")

DS = "${DS_PROMETHEUS}"
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME = re.compile(r"(?<![A-Za-z0-9_:$])milvus_dr[A-Za-z0-9_:]*")
GRAFANA_RANGE = re.compile(r"\$\{?__(rate_interval|interval|range)(?::\w+)?\}?")
GRAFANA_VAR = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


class DashboardError(Exception):
    pass


def rule_exprs():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    for group in doc["groups"]:
        for rule in group["rules"]:
            what = rule.get("alert") or rule.get("record")
            yield f"rules.yml {group['name']}/{what}", rule["expr"]


def _ds_uid(ds):
    return ds.get("uid") if isinstance(ds, dict) else ds


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_exprs():
    with open(DASHBOARD) as f:
        d = json.load(f)
    errors = []
    if d.get("schemaVersion", 0) < 36:
        errors.append(f"schemaVersion {d.get('schemaVersion')} < 36")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
        errors.append("no datasource variable DS_PROMETHEUS")
    if "datacenter" not in variables:
        errors.append("no datacenter variable")
    for name, v in variables.items():
        if v.get("type") == "query":
            if _ds_uid(v.get("datasource")) != DS:
                errors.append(f"variable {name}: datasource is not {DS}")
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q or "")
            yield f"variable {name}", (m.group(1) if m else q)
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            if _ds_uid(a.get("datasource")) != DS:
                errors.append(f"annotation {a.get('name')}: datasource is not {DS}")
            yield f"annotation {a.get('name')}", a["expr"]
    ids = set()
    for p in _panels(d.get("panels", [])):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            errors.append(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        if _ds_uid(p.get("datasource")) != DS:
            errors.append(f"{where}: datasource is not {DS}")
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"{where}: no queries")
        for t in targets:
            if _ds_uid(t.get("datasource")) != DS:
                errors.append(f"{where} {t.get('refId')}: datasource is not {DS}")
            if not t.get("expr"):
                errors.append(f"{where} {t.get('refId')}: no expr")
                continue
            yield f"{where} {t.get('refId')}", t["expr"]
    if errors:
        raise DashboardError("grafana/milvus-dr.json:\n  " + "\n  ".join(errors))


def names_in(expr):
    return set(NAME.findall(STRING.sub('""', expr)))


def all_exprs():
    yield from rule_exprs()
    yield from dashboard_exprs()


def fill_grafana_vars(expr):
    expr = GRAFANA_RANGE.sub("5m", expr)
    return GRAFANA_VAR.sub("dc-a", expr)


def github_anchor(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def main(argv):
    if argv[:1] == ["--dashboard-rules"]:
        rules = [
            {"record": f"dashboard:query_{i}", "expr": fill_grafana_vars(e)}
            for i, (_, e) in enumerate(dashboard_exprs())
        ]
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]},
                       sys.stdout, sort_keys=False, width=1000)
        return 0
    if argv[:1] == ["--missing-runbooks"] and len(argv) == 2:
        with open(argv[1]) as f:
            anchors = {github_anchor(m.group(1))
                       for m in re.finditer(r"^#+\s+(.*)$", f.read(), re.M)}
        with open(RULES) as f:
            doc = yaml.safe_load(f)
        want = sorted({r["annotations"]["runbook_url"].split("#", 1)[1]
                       for g in doc["groups"] for r in g["rules"] if "alert" in r})
        missing = [a for a in want if a not in anchors]
        print("\n".join(missing))
        return 1 if missing else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 64
    names = set()
    for where, expr in all_exprs():
        found = names_in(expr)
        if not found and "milvus_dr" not in expr and not re.search(r"\bup\b", expr):
            print(f"warning: {where} uses no milvus_dr metric: {expr}", file=sys.stderr)
        names |= found
    print("\n".join(sorted(names)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except DashboardError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
