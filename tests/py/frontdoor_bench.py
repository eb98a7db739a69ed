#!/usr/bin/env python3
"""pymilvus' MilvusClient at full speed against one address: inserts --rows
rows of --dim floats in --batch-row calls into a new collection, loads it,
then runs --searches single-vector searches (top 10). Prints one JSON
object: insert rows/s and search latency percentiles (ms).

Used by the bench_frontdoor benchmark, against Milvus directly and through
the front door, in the same run.

With --also (one or more further addresses), all addresses in one process,
call by call: each batch is inserted through every address, into one
collection per address, the order rotating from batch to batch, each call
timed alone; then each query is searched through every address the same
way. All sides see the same background load of Milvus (flushes, index
builds), which whole runs one after the other do not. Prints
{"sides": [...]}, one object per address in the order given: the summary
and every call's time in ms ("insert_ms", "search_ms"), so that calls can
be compared pair by pair. With --cpu-pid, also the CPU time that process
(an agent) used during each side's inserts ("cpu_pid_insert_s").
"""
import argparse
import json
import os
import random
import time
import warnings

warnings.filterwarnings("ignore")

from pymilvus import DataType, MilvusClient  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--db", default="")
    p.add_argument("--collection", required=True)
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--searches", type=int, default=300)
    p.add_argument("--also", action="append", default=[])
    p.add_argument("--cpu-pid", type=int)
    a = p.parse_args()
    if a.also:
        return interleaved(a)
    c = MilvusClient(uri=a.uri, db_name=a.db)
    create(c, a.collection, a.dim)
    rnd = random.Random(7)
    batches = make_batches(rnd, a)
    t = time.perf_counter()
    for b in batches:
        c.insert(a.collection, b)
    insert_s = time.perf_counter() - t
    c.load_collection(a.collection)
    queries = [[rnd.random() for _ in range(a.dim)] for _ in range(a.searches)]
    # Warm-up, not measured.
    for q in queries[:20]:
        c.search(a.collection, data=[q], limit=10)
    lat = []
    for q in queries:
        t = time.perf_counter()
        c.search(a.collection, data=[q], limit=10)
        lat.append((time.perf_counter() - t) * 1000.0)
    c.drop_collection(a.collection)
    print(json.dumps(summary(a.rows, insert_s, lat)))


def interleaved(a):
    uris = [a.uri] + a.also
    sides = [
        (MilvusClient(uri=u, db_name=a.db), "%s_%d" % (a.collection, k + 1))
        for k, u in enumerate(uris)
    ]
    n = len(sides)
    for c, name in sides:
        create(c, name, a.dim)
    rnd = random.Random(7)
    batches = make_batches(rnd, a)

    def rotate(i):
        return [(i + j) % n for j in range(n)]

    insert_ms = [[] for _ in sides]
    cpu_s = [0.0 for _ in sides]
    for i, b in enumerate(batches):
        for k in rotate(i):
            c, name = sides[k]
            before = cpu_seconds(a.cpu_pid)
            t = time.perf_counter()
            c.insert(name, b)
            insert_ms[k].append((time.perf_counter() - t) * 1000.0)
            cpu_s[k] += cpu_seconds(a.cpu_pid) - before
    for c, name in sides:
        c.load_collection(name)
    queries = [[rnd.random() for _ in range(a.dim)] for _ in range(a.searches)]
    for q in queries[:20]:
        for c, name in sides:
            c.search(name, data=[q], limit=10)
    search_ms = [[] for _ in sides]
    for i, q in enumerate(queries):
        for k in rotate(i):
            c, name = sides[k]
            t = time.perf_counter()
            c.search(name, data=[q], limit=10)
            search_ms[k].append((time.perf_counter() - t) * 1000.0)
    for c, name in sides:
        c.drop_collection(name)
    out = []
    for k in range(n):
        d = summary(a.rows, sum(insert_ms[k]) / 1000.0, search_ms[k])
        d["insert_ms"] = [round(x, 3) for x in insert_ms[k]]
        d["search_ms"] = [round(x, 3) for x in search_ms[k]]
        if a.cpu_pid:
            d["cpu_pid_insert_s"] = cpu_s[k]
        out.append(d)
    print(json.dumps({"sides": out}))


def cpu_seconds(pid):
    """User and system CPU time of process pid (every thread), 0 without."""
    if not pid:
        return 0.0
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create(c, name, dim):
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="L2")
    c.create_collection(name, schema=schema, index_params=index)


def make_batches(rnd, a):
    batches = []
    for lo in range(0, a.rows, a.batch):
        batches.append(
            [
                {"id": i, "vector": [rnd.random() for _ in range(a.dim)]}
                for i in range(lo, min(lo + a.batch, a.rows))
            ]
        )
    return batches


def summary(rows, insert_s, lat):
    lat = sorted(lat)
    pick = lambda p: lat[min(len(lat) - 1, int(round((len(lat) - 1) * p)))]
    return {
        "insert_rows_per_s": rows / insert_s,
        "search_p50_ms": pick(0.5),
        "search_p99_ms": pick(0.99),
    }


if __name__ == "__main__":
    main()
