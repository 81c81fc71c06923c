"""Row-level reuse: the unchanged objects of a changed shard keep their rows from the earlier output.

A folder shard gets a new id when it gains or loses a member, so objects added among existing names change
most shards of a pool even when they are few. Every number of a row depends only on the output's params
(``params.json``, one for the whole output) and the row's own object, so the row of an object that is still
listed with the same size and version (``object_version``, recorded in each row) is carried over as it is:
only the new and changed objects of a changed shard are read, decoded and scored.

Flow (:func:`carry_over`): the markers of the finished shards that are no longer planned (the *old* shards)
hold each one's smallest and largest row id. Ray tasks, each over a batch of the changed folder shards, load
each shard's members from the manifest, find the old shards of the same folder whose id range overlaps the
shard's, read their rows, and write the rows of unchanged members into the new shard (``shard`` set to the
new id; row positions after those left to score, so part names never collide); the members left to score go
into one *residual* manifest part per task, which the engine reads through the ordinary read path. The driver
gets one small record per changed shard, never a row.

Tar and Parquet shards are identified by their file's name, size and version: a changed file is a new shard,
scored whole. No row is carried for a member the listing failed (it is not read anyway), nor from an old row
that failed to read (``read_error:*``: a new read may succeed) or was a listing failure.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.data.listing import PART_ROW_GROUP
from mak_ray.data.manifest import read_rows
from mak_ray.data.sources import UNIT_COLUMNS, object_versions
from mak_ray.layout import ShardedOutput
from mak_ray.score.parts import part_name, write_part

SHARDS_PER_TASK = 16
MAX_IN_FLIGHT = 16
TASK_CPUS = 0.5  # mostly waiting on storage: reads of old parts and manifest rows, one write per shard
NOT_CARRIED = ("read_error", "broken_link", "not_a_regular_file")  # old errors that need a new look
RECORD_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("n", pa.int64()),  # rows carried over
        ("failed", pa.string()),  # JSON {reason: count} of the carried rows
        ("first", pa.string()),  # the smallest and largest carried id
        ("last", pa.string()),
        ("rest", pa.int64()),  # members left to score
    ]
)
_FOLDER = r"/[^/]*$"  # an id's last path component: what is left is its folder


@dataclass
class Carried:
    """What the carry tasks did: one record per shard that got rows, the shard index of the residual shards
    (``part`` indexing ``parts``) and the residual manifest parts."""

    records: pa.Table
    units: pa.Table
    parts: list[str]

    @property
    def rows(self) -> int:
        return int(pc.sum(self.records["n"]).as_py() or 0)


def old_ranges(old: pa.Table) -> pa.Table:
    """``(shard, folder, first, last)`` of the old shards' markers that have an id range, sorted by folder and
    first id (the order the carry tasks search)."""
    t = old.filter(pc.is_valid(old["first"]))
    folder = pc.replace_substring_regex(t["first"], _FOLDER, "")
    table = pa.table({"shard": t["shard"], "folder": folder, "first": t["first"], "last": t["last"]})
    return table.sort_by([("folder", "ascending"), ("first", "ascending")])


def residual_dir(manifest: str, out: ShardedOutput) -> str:
    """Where the residual parts of ``out``'s run over one manifest go: inside that manifest's folder (removed
    with it), named by the output."""
    return storage.join(manifest, "carry-" + hashlib.sha1(out.root.encode()).hexdigest()[:12])


class _Ranges:
    """The old shards' id ranges as sorted arrays, searched per changed shard."""

    def __init__(self, table: pa.Table) -> None:
        self.shard = np.array(table["shard"].to_pylist(), dtype=object)
        self.folder = np.array(table["folder"].to_pylist(), dtype=object)
        self.first = np.array(table["first"].to_pylist(), dtype=object)
        self.last = np.array(table["last"].to_pylist(), dtype=object)

    def overlapping(self, folder: str, lo: str, hi: str) -> list[str]:
        """Old shards of ``folder`` whose id range meets ``[lo, hi]``."""
        a = int(np.searchsorted(self.folder, folder, side="left"))
        b = int(np.searchsorted(self.folder, folder, side="right"))
        c = a + int(np.searchsorted(self.first[a:b], hi, side="right"))
        return [str(self.shard[i]) for i in range(a, c) if self.last[i] >= lo]


def _old_rows(out: ShardedOutput, sids: list[str]) -> pa.Table | None:
    tables = []
    for sid in sids:
        try:
            files = storage.list_files(out.shard_dir(sid), (".parquet",))
        except FileNotFoundError:
            continue
        for f in files:
            t = storage.read_parquet(f)
            if "object_version" in t.column_names:  # an output written before rows recorded it: rescore
                tables.append(t)
    return pa.concat_tables(tables) if tables else None


def _carry_shard(
    sid: str, members: pa.Table, ranges: _Ranges, out: ShardedOutput
) -> tuple[dict[str, Any], pa.Table] | None:
    """Carry the unchanged members' rows of shard ``sid`` into its output; the carried record and the members
    left to score, or None when nothing is carried."""
    ids = members["id"]
    lo, hi = pc.min(ids).as_py(), pc.max(ids).as_py()
    folder = re.sub(_FOLDER, "", ids[0].as_py())
    old = _old_rows(out, ranges.overlapping(folder, lo, hi))
    if old is None:
        return None
    listed = members.filter(pc.is_null(members["error"]))
    version = dict(zip(listed["id"].to_pylist(), object_versions(listed).to_pylist()))
    keep = np.zeros(old.num_rows, dtype=bool)
    seen: set[str] = set()
    for i, (rid, ver, err) in enumerate(
        zip(old["id"].to_pylist(), old["object_version"].to_pylist(), old["error"].to_pylist())
    ):
        if rid in seen or version.get(rid) is None or version[rid] != ver:
            continue
        if err is not None and err.startswith(NOT_CARRIED):
            continue
        keep[i] = True
        seen.add(rid)
    if not keep.any():
        return None
    carried = old.filter(pa.array(keep)).sort_by("id")
    carried = carried.set_column(
        carried.schema.get_field_index("shard"), "shard", pa.array([sid] * carried.num_rows, pa.string())
    )
    rest = members.filter(pc.invert(pc.is_in(ids, value_set=carried["id"])))
    k = rest.num_rows
    write_part(carried, out.part(sid, part_name(np.arange(k, k + carried.num_rows))))
    failed = collections.Counter(e for e in carried["error"].to_pylist() if e is not None)
    record = {
        "shard": sid,
        "n": carried.num_rows,
        "failed": json.dumps(dict(failed), sort_keys=True),
        "first": carried["id"][0].as_py(),
        "last": carried["id"][-1].as_py(),
        "rest": k,
    }
    return record, rest


def carry_task(
    units: pa.Table, part_uris: list[str], ranges: pa.Table, out_root: str, residual_uri: str
) -> dict[str, Any]:
    """Carry-over for the shards of ``units`` (shard-index rows); returns the records, the residual shard
    index (``part`` 0: the residual part at ``residual_uri``, written when any member is left to score)."""
    out = ShardedOutput(out_root)
    search = _Ranges(ranges)
    records: dict[str, list] = {f.name: [] for f in RECORD_SCHEMA}
    index: dict[str, list] = {c: [] for c in UNIT_COLUMNS}
    rests: list[pa.Table] = []
    offset = 0
    for unit in units.to_pylist():
        members = read_rows(part_uris[int(unit["part"])], int(unit["start"]), int(unit["stop"]))
        done = _carry_shard(str(unit["shard"]), members, search, out)
        if done is None:
            continue
        record, rest = done
        for k, v in record.items():
            records[k].append(v)
        if rest.num_rows:
            for k, v in zip(
                UNIT_COLUMNS, (unit["shard"], unit["kind"], 0, offset, offset + rest.num_rows, rest.num_rows)
            ):
                index[k].append(v)
            rests.append(rest)
            offset += rest.num_rows
    if rests:
        storage.write_parquet(pa.concat_tables(rests), residual_uri, row_group_size=PART_ROW_GROUP)
    return {
        "records": pa.table(records, schema=RECORD_SCHEMA),
        "units": pa.table(index, schema=units.select(list(UNIT_COLUMNS)).schema),
        "part": residual_uri if rests else None,
    }


def carry_over(
    out: ShardedOutput, todo: pa.Table, part_uris: list[str], old: pa.Table, residual: str
) -> Carried:
    """Carry the unchanged rows of the old shards ``old`` (their markers) into the folder shards of ``todo``
    (the shards to score, ``part`` indexing ``part_uris``), in Ray tasks; residual parts go under
    ``residual``."""
    import ray

    ranges = old_ranges(old)
    files = todo.filter(pc.equal(todo["kind"], "files")).select(list(UNIT_COLUMNS))
    empty = Carried(RECORD_SCHEMA.empty_table(), files.schema.empty_table(), [])
    if not ranges.num_rows or not files.num_rows:
        return empty
    storage.delete(residual)
    task = ray.remote(carry_task).options(num_cpus=TASK_CPUS)
    ranges_ref = ray.put(ranges)
    pending: list = []
    results: list[dict[str, Any]] = []
    for i, start in enumerate(range(0, files.num_rows, SHARDS_PER_TASK)):
        if len(pending) >= MAX_IN_FLIGHT:
            ready, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(ready[0]))
        batch = files.slice(start, SHARDS_PER_TASK)
        uri = storage.join(residual, f"part-{i:06d}.parquet")
        pending.append(task.remote(batch, part_uris, ranges_ref, out.root, uri))
    results += ray.get(pending)
    parts: list[str] = []
    units = []
    for res in results:
        if res["part"] is not None:
            u = res["units"]
            part = pa.array(np.full(u.num_rows, len(parts), dtype=np.int32))
            units.append(u.set_column(u.schema.get_field_index("part"), "part", part))
            parts.append(res["part"])
    return Carried(
        pa.concat_tables([r["records"] for r in results]),
        pa.concat_tables(units) if units else empty.units,
        parts,
    )
