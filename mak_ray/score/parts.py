"""Part files of the score/embed output: one Parquet file per (scorer call, shard), written by the actor.

The scoring actor writes its own output (see ``ModelActor(write=...)``): no separate write stage, so no
third process competing for the CPUs, no object-store copy of the embeddings, and no cold write worker at
the end of the run. Part names are a function of the rows they hold, so a retried call overwrites rather
than adds. Each call returns one small accounting record per file for the driver (with the smallest and
largest id of the file: a shard's id range, kept in its marker, tells a later run which old shards may hold
a changed shard's objects, see :mod:`mak_ray.score.carry`). Each row records its object's version
(``object_version``), so that a later run can carry it over while the object is unchanged. The embedding
column is stored plain (no dictionary, no compression, see ``PLAIN_COLUMNS``); outputs written with other
encodings read the same.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from mak_ray import storage
from mak_ray.layout import ShardedOutput

RECORD_COLUMNS = ("shard", "n", "failed", "total", "max_rss", "ready_at", "first", "last")
# Written without dictionary or compression: reading the embeddings dominates the select stage, and a
# dictionary on float16 values that rarely repeat costs a lookup per value for a few percent of size.
PLAIN_COLUMNS = ("embedding",)


def write_part(table: pa.Table, uri: str) -> None:
    """One part file of a score/embed output (every writer of part files goes through here)."""
    storage.write_parquet(table, uri, plain=[c for c in PLAIN_COLUMNS if c in table.column_names])


def part_name(rows: np.ndarray) -> str:
    """The name of the part holding a shard's rows at positions ``rows`` (sorted): a function of those rows, so
    that a retried write overwrites the same file and two parts of one shard never share a name."""
    rows = np.asarray(rows, dtype=np.int64)
    digest = hashlib.sha1(rows.tobytes()).hexdigest()[:12]
    return f"part-{int(rows[0]):09d}-{digest}.parquet"


def _table(cols: dict[str, np.ndarray], emb_dtype: str) -> pa.Table:
    n = len(cols["id"])
    failed = np.array([e is not None for e in cols["error"]], dtype=bool)
    emb = np.asarray(cols["embedding"], dtype=emb_dtype)
    dim = emb.shape[1]
    flat = pa.array(emb.reshape(-1), type=pa.from_numpy_dtype(np.dtype(emb_dtype)))
    embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(failed))
    arrays = {"id": pa.array([str(i) for i in cols["id"]], pa.string())}
    if "ecle" in cols:  # a scorer's output; an embedder's has the embedding only
        arrays["ecle"] = pa.array(np.asarray(cols["ecle"], np.float32), pa.float32(), mask=failed)
        arrays["proximity"] = pa.array(np.asarray(cols["proximity"], np.float32), pa.float32(), mask=failed)
        arrays["nn_distance"] = pa.array(
            np.asarray(cols["nn_distance"], np.float32), pa.float32(), mask=failed
        )
    arrays["embedding"] = embedding
    arrays["label"] = pa.array([None if v is None else str(v) for v in cols["label"]], pa.string())
    arrays["error"] = pa.array([None if v is None else str(v) for v in cols["error"]], pa.string())
    arrays["shard"] = pa.array([str(s) for s in cols["shard"]], pa.string())
    if "object_version" in cols:  # what a later run compares to know the object is unchanged
        arrays["object_version"] = pa.array(
            [None if v is None else str(v) for v in cols["object_version"]], pa.string()
        )
    assert all(len(a) == n for a in arrays.values())
    return pa.table(arrays)


def write_parts(
    cols: dict[str, Any], out: ShardedOutput, emb_dtype: str, ready_at: float = 0.0
) -> dict[str, np.ndarray]:
    """Write one part file per shard present in ``cols``; return one small accounting record per file.

    ``cols``: the scorer's output columns (``id``, ``shard``, ``row``, ``shard_rows``, ``label``, ``error``,
    ``embedding``, and ``ecle``/``proximity`` from a scorer). ``ready_at``: when the writing actor had its
    model loaded (epoch seconds), passed through so the driver can report startup apart from steady work.
    """
    cols = {k: v if isinstance(v, np.ndarray) else np.array(v, dtype=object) for k, v in cols.items()}
    shards = np.array([str(s) for s in cols["shard"]], dtype=object)
    rec: dict[str, list] = collections.defaultdict(list)
    for sid in sorted(set(shards)):
        m = np.flatnonzero(shards == sid)
        m = m[np.argsort(cols["row"][m], kind="stable")]
        part = {k: v[m] for k, v in cols.items()}
        write_part(_table(part, emb_dtype), out.part(sid, part_name(part["row"])))
        reasons = collections.Counter(str(e) for e in part["error"] if e is not None)
        rec["shard"].append(sid)
        rec["n"].append(len(m))
        rec["failed"].append(json.dumps(dict(reasons)))
        rec["total"].append(int(np.max(part["shard_rows"])))
        rec["max_rss"].append(int(np.max(part["max_rss"])) if "max_rss" in part else 0)
        rec["ready_at"].append(float(ready_at))
        ids = [str(i) for i in part["id"]]
        rec["first"].append(min(ids))
        rec["last"].append(max(ids))
    return {
        "shard": np.array(rec["shard"], dtype=object),
        "n": np.array(rec["n"], dtype=np.int64),
        "failed": np.array(rec["failed"], dtype=object),
        "total": np.array(rec["total"], dtype=np.int64),
        "max_rss": np.array(rec["max_rss"], dtype=np.int64),
        "ready_at": np.array(rec["ready_at"], dtype=np.float64),
        "first": np.array(rec["first"], dtype=object),
        "last": np.array(rec["last"], dtype=object),
    }
