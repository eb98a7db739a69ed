#!/usr/bin/env python3
"""Drives Milvus with pymilvus' MilvusClient, as applications do, and prints
what it saw as one JSON object on stdout (no collection names in it, so two
runs on different collections compare equal).

  sequence: create a collection with an index, insert, upsert, delete by
            ids and by filter, load, search, query, release, load again,
            and (unless --keep) drop it.
  read:     search and query an existing collection.
  insert:   insert one row; prints the error if the call is refused.
  burst:    insert --count rows from --id on, --batch at a time, until a
            call fails (the agent was killed): prints the ids acknowledged
            and those whose outcome is unknown. A progress line per batch.

Used by tests/tests/frontdoor.rs with the venv's python.
"""
import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import grpc  # noqa: E402
from pymilvus import DataType, MilvusClient, MilvusException  # noqa: E402

DIM = 8


def vector(i, version=1):
    return [float((i * (j + 3) + version * 7) % 97) / 97.0 for j in range(DIM)]


def rows(ids, version=1):
    return [{"id": i, "vector": vector(i, version), "n": i * 10 + version} for i in ids]


def reads(c, name):
    hits = c.search(
        name,
        data=[vector(20)],
        limit=5,
        output_fields=["n"],
        search_params={"metric_type": "L2", "params": {}},
    )
    search = [
        {"id": h["id"], "n": h["entity"]["n"], "distance": round(h["distance"], 4)}
        for h in hits[0]
    ]
    low = c.query(name, filter="id < 10", output_fields=["id", "n"])
    upserted = c.query(name, filter="id in [50, 55, 59]", output_fields=["id", "n"])
    count = c.query(name, filter="", output_fields=["count(*)"])
    return {
        "search": search,
        "query_low": sorted([[r["id"], r["n"]] for r in low]),
        "query_upserted": sorted([[r["id"], r["n"]] for r in upserted]),
        "count": count[0]["count(*)"],
    }


def create(c, name):
    """id, an 8-d vector with a FLAT index, n; loaded (MilvusClient loads a
    collection created with an index)."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("n", DataType.INT64)
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="L2")
    c.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")


def sequence(c, name, keep):
    out = {}
    create(c, name)
    out["created"] = c.has_collection(name)
    out["indexes"] = c.list_indexes(name)
    out["insert"] = c.insert(name, rows(range(100)))["insert_count"]
    out["upsert"] = c.upsert(name, rows(range(50, 60), version=2))["upsert_count"]
    c.delete(name, ids=[0, 1, 2])
    c.delete(name, filter="id >= 90 and id < 95")
    c.load_collection(name)
    out["loaded"] = str(c.get_load_state(name)["state"])
    out["reads"] = reads(c, name)
    c.release_collection(name)
    out["released"] = str(c.get_load_state(name)["state"])
    c.load_collection(name)
    out["reloaded"] = str(c.get_load_state(name)["state"])
    out["reads_after_reload"] = reads(c, name)
    if not keep:
        c.drop_collection(name)
        out["dropped"] = not c.has_collection(name)
    return out


def burst(c, name, start, count, batch):
    acked, unknown = [], []
    for lo in range(start, start + count, batch):
        ids = list(range(lo, min(lo + batch, start + count)))
        try:
            c.insert(name, rows(ids), timeout=5, retry_times=0)
        except Exception as e:  # the agent is gone: stop here
            unknown.extend(ids)
            print(json.dumps({"failed": str(e)[:200]}), flush=True)
            break
        acked.extend(ids)
        print(json.dumps({"progress": len(acked)}), flush=True)
    return {"acked": acked, "unknown": unknown}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("op", choices=["sequence", "read", "insert", "burst", "create"])
    p.add_argument("--uri", required=True)
    p.add_argument("--db", default="")
    p.add_argument("--collection", required=True)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--id", type=int, default=9999)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--batch", type=int, default=10)
    # insert: the call's deadline, which also bounds pymilvus's retries of
    # UNAVAILABLE (an int: pymilvus ignores a float there).
    p.add_argument("--timeout", type=int, default=2)
    a = p.parse_args()
    c = MilvusClient(uri=a.uri, db_name=a.db)
    if a.op == "sequence":
        out = sequence(c, a.collection, a.keep)
    elif a.op == "read":
        out = reads(c, a.collection)
    elif a.op == "create":
        create(c, a.collection)
        out = {"created": c.has_collection(a.collection)}
    elif a.op == "burst":
        out = burst(c, a.collection, a.id, a.count, a.batch)
    else:
        try:
            # The timeout bounds pymilvus' retries of UNAVAILABLE (sync
            # mode's refusal); PERMISSION_DENIED is not retried.
            out = {"insert": c.insert(a.collection, rows([a.id]), timeout=a.timeout)["insert_count"]}
        except MilvusException as e:
            # After retries pymilvus wraps the gRPC error, its code a method.
            code = e.code() if callable(e.code) else e.code
            out = {"error": {"code": getattr(code, "name", str(code)), "message": e.message}}
        except grpc.RpcError as e:
            out = {"error": {"code": e.code().name, "message": e.details()}}
    json.dump(out, sys.stdout, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
