#!/usr/bin/env python3
"""pymilvus' MilvusClient at full speed against one address: inserts --rows
rows of --dim floats in --batch-row calls into a new collection, loads it,
then runs --searches single-vector searches (top 10). Prints one JSON
object: insert rows/s and search latency percentiles (ms).

Used by the bench_frontdoor benchmark, against Milvus directly and through
the front door, in the same run.
"""
import argparse
import json
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
    a = p.parse_args()
    c = MilvusClient(uri=a.uri, db_name=a.db)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=a.dim)
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="L2")
    c.create_collection(a.collection, schema=schema, index_params=index)
    rnd = random.Random(7)
    batches = []
    for lo in range(0, a.rows, a.batch):
        batches.append(
            [
                {"id": i, "vector": [rnd.random() for _ in range(a.dim)]}
                for i in range(lo, min(lo + a.batch, a.rows))
            ]
        )
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
    lat.sort()
    pick = lambda p: lat[min(len(lat) - 1, int(round((len(lat) - 1) * p)))]
    c.drop_collection(a.collection)
    print(
        json.dumps(
            {
                "insert_rows_per_s": a.rows / insert_s,
                "search_p50_ms": pick(0.5),
                "search_p99_ms": pick(0.99),
            }
        )
    )


if __name__ == "__main__":
    main()
