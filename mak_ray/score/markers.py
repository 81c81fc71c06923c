"""Finished-shard markers of a sharded output, written in batches, and the counts they add up to.

A shard is finished once every one of its rows is in a part file. Its marker (shard id, rows, scored, failed
by reason, and the smallest and largest row id, which a later run uses to find the old shards that may hold
a changed shard's objects) goes into a batch that is written as one Parquet file under ``_markers/`` every
``BATCH_SHARDS`` shards or ``BATCH_SECONDS`` seconds and at the end (JSON lines, so that no reader of the
output's Parquet parts mistakes it for one), and a pool of 10^5 shards costs a few hundred small writes, not
10^5 sequential ones. Failure reasons are counters that add up across shards, runs
and batches. A shard whose marker was not written yet when a run stopped is scored again by the next run
(its partial output is removed first).
"""

from __future__ import annotations

import collections
import json
import logging
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.layout import ShardedOutput

log = logging.getLogger(__name__)

BATCH_SHARDS = 1000
BATCH_SECONDS = 10.0
SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("rows", pa.int64()),
        ("scored", pa.int64()),
        ("failed", pa.string()),
        ("first", pa.string()),  # the smallest row id (None: an empty shard, or a marker without it)
        ("last", pa.string()),  # the largest
    ]
)


def _batch_name() -> str:
    return f"batch-{int(time.time() * 1000):015d}-{uuid.uuid4().hex[:8]}"


def _batch_files(out: ShardedOutput) -> list[str]:
    if not storage.exists(out.markers_dir):
        return []
    return storage.list_files(out.markers_dir, (".jsonl",))


def _parse(text: str) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for line in text.splitlines():
        if line.strip():
            m = json.loads(line)
            cols["shard"].append(m["shard"])
            cols["rows"].append(m["rows"])
            cols["scored"].append(m["scored"])
            cols["failed"].append(json.dumps(m["failed"], sort_keys=True))
            cols["first"].append(m.get("first"))
            cols["last"].append(m.get("last"))
    return pa.table(cols, schema=SCHEMA)


def _text(table: pa.Table) -> str:
    return "".join(
        json.dumps(
            {"shard": s, "rows": r, "scored": c, "failed": json.loads(f), "first": a, "last": b},
            sort_keys=True,
        )
        + "\n"
        for s, r, c, f, a, b in zip(*(table.column(n).to_pylist() for n in SCHEMA.names))
    )


def read_markers(out: ShardedOutput) -> pa.Table:
    """Every marker of ``out`` (one row per finished shard), in shard order."""
    files = _batch_files(out)
    if not files:
        return SCHEMA.empty_table()
    table = pa.concat_tables([_parse(storage.read_text(f)) for f in files]).sort_by("shard")
    if table.num_rows > 1:  # a shard marked twice (a batch written again after a crash): keep one
        sids = table.column("shard")
        dup = pc.equal(sids.slice(1), sids.slice(0, table.num_rows - 1))
        table = table.filter(pa.concat_arrays([pa.array([True]), pc.invert(dup).combine_chunks()]))
    return table


def rewrite(out: ShardedOutput, keep: pa.Table) -> None:
    """Replace every marker batch by one holding ``keep`` (written before the old ones are removed)."""
    old = _batch_files(out)
    if keep.num_rows:
        storage.write_text(out.marker_batch(_batch_name()), _text(keep.cast(SCHEMA)))
    for f in old:
        storage.delete(f)


class MarkerWriter:
    """Collects markers of finished shards and writes them in batches."""

    def __init__(self, out: ShardedOutput) -> None:
        self.out = out
        self.rows: dict[str, list] = {f.name: [] for f in SCHEMA}
        self.last = time.monotonic()
        self.written = 0

    def add(
        self,
        sid: str,
        rows: int,
        scored: int,
        failed: dict[str, int],
        first: str | None = None,
        last: str | None = None,
    ) -> None:
        self.rows["shard"].append(sid)
        self.rows["rows"].append(int(rows))
        self.rows["scored"].append(int(scored))
        self.rows["failed"].append(json.dumps(failed, sort_keys=True))
        self.rows["first"].append(first)
        self.rows["last"].append(last)
        if len(self.rows["shard"]) >= BATCH_SHARDS or time.monotonic() - self.last >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        n = len(self.rows["shard"])
        self.last = time.monotonic()
        if not n:
            return
        storage.write_text(self.out.marker_batch(_batch_name()), _text(pa.table(self.rows, schema=SCHEMA)))
        self.written += n
        self.rows = {f.name: [] for f in SCHEMA}


def totals(markers: pa.Table) -> tuple[int, int, collections.Counter]:
    """``(inputs, scored, failed by reason)`` over ``markers``."""
    failed: collections.Counter = collections.Counter()
    for text in markers.column("failed").to_pylist():
        failed.update(json.loads(text))
    inputs = int(pc.sum(markers.column("rows")).as_py() or 0)
    scored = int(pc.sum(markers.column("scored")).as_py() or 0)
    return inputs, scored, failed
