"""Chosen objects fetched once into Parquet (``id``, ``label``, ``image`` bytes, ``error``), by parallel tasks.

Retraining reads the target set and the K selected pool objects every epoch; reading them from the pool
would cost a pass over every shard that holds a pick, each epoch. Instead they are fetched once:

- :func:`fetch_shards`: whole shards of a plan (the target set);
- :func:`fetch_ids`: objects by id: an image file with one GET (local: one read) per id, a tar member from
  its tar (one sequential read of the tar, stopped once its last wanted member is found), a Parquet row from
  the row groups that hold it (only its shard's id column and the image column of those row groups).

So the cost depends on what is fetched, not on the pool. Each task writes one part file and returns its
counts: rows, usable rows (bytes that decode), failures by reason and the bytes read (of the fetched objects;
for Parquet, of the compressed column chunks read).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mak_ray import storage
from mak_ray.config import DataSection
from mak_ray.data import names
from mak_ray.data.decode import decode_image
from mak_ray.data.names import SkipRules
from mak_ray.data.readers import (
    Record,
    fetch_many,
    image_bytes,
    iter_records,
    iter_tar,
    open_object,
    parquet_row_id,
    read_error,
)
from mak_ray.data.sources import UNIT_COLUMNS, load_shard

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [("id", pa.string()), ("label", pa.string()), ("image", pa.binary()), ("error", pa.string())]
)
IDS_PER_TASK = 1000
SHARDS_PER_TASK = 4
FETCH_CPUS = 0.25  # fetching waits on storage


class _Part:
    """Records of one task, written as one part file, and their counts."""

    def __init__(self, data: DataSection) -> None:
        self.data = data
        self.cols: dict[str, list] = {f.name: [] for f in SCHEMA}
        self.failed: collections.Counter = collections.Counter()
        self.bytes = 0
        self.usable = 0

    def add(self, rec: Record) -> None:
        err = rec.error
        if err is None:
            self.bytes += len(rec.data or b"")
            err = decode_image(rec.data or b"", self.data.image_size, self.data.max_pixels)[1]
        if err is None:
            self.usable += 1
        else:
            self.failed[err] += 1
        self.cols["id"].append(rec.id)
        self.cols["label"].append(rec.label)
        self.cols["image"].append(rec.data if err is None else None)
        self.cols["error"].append(err)

    def write(self, uri: str) -> dict[str, Any]:
        storage.write_parquet(pa.table(self.cols, schema=SCHEMA), uri)
        return {
            "rows": len(self.cols["id"]),
            "usable": self.usable,
            "failed": dict(self.failed),
            "bytes_read": self.bytes,
        }


def _fetch_shards_task(units: list[dict], parts: list[str], data: dict, uri: str) -> dict[str, Any]:
    d = DataSection(**data)
    out = _Part(d)
    for unit in units:
        for rec in iter_records(load_shard(unit, parts), d):
            out.add(rec)
    return out.write(uri)


def _tar_members(tar_id: str, wanted: set[str], skip: SkipRules) -> Iterator[Record]:
    """The wanted members of one tar, streamed; the read stops after the last one."""
    left = set(wanted)
    failure = "read_error:not_found"
    for rec in iter_tar(tar_id, skip):
        if rec.id in left:
            left.discard(rec.id)
            yield rec
            if not left:
                return
        elif rec.error and (rec.id == tar_id or rec.id.startswith(tar_id + "#%3Cafter")):  # the tar failed
            failure = rec.error
            break
    for rid in sorted(left):
        yield Record(rid, None, None, failure)


def _parquet_members(
    unit: dict, parts: list[str], wanted: set[str], d: DataSection, part: _Part
) -> Iterator[Record]:
    """The wanted ids of one Parquet shard: its id column, then the image (and label) columns of the row
    groups that hold them."""
    shard = load_shard(unit, parts)
    rid = shard.paths[0]
    found: dict[str, Record] = {}
    try:
        with open_object(rid) as f:
            pf = pq.ParquetFile(f)
            groups = (
                shard.row_groups if shard.row_groups is not None else list(range(pf.metadata.num_row_groups))
            )
            has_label = d.label_column in pf.schema_arrow.names
            for g in groups:
                ids = [
                    parquet_row_id(v)
                    for v in pf.read_row_group(g, columns=[d.id_column]).column(0).to_pylist()
                ]
                rows = [i for i, v in enumerate(ids) if v in wanted and v not in found]
                if not rows:
                    continue
                cols = [d.image_column] + ([d.label_column] if has_label else [])
                t = pf.read_row_group(g, columns=cols).take(pa.array(rows))
                rg = pf.metadata.row_group(g)
                part.bytes += sum(rg.column(i).total_compressed_size for i in range(rg.num_columns))
                labels = t.column(d.label_column).to_pylist() if has_label else [None] * len(rows)
                for r, img, lab in zip(rows, t.column(d.image_column).to_pylist(), labels):
                    b = image_bytes(img)
                    label = None if lab is None else str(lab)
                    found[ids[r]] = Record(ids[r], b, label, None if b is not None else "missing_image")
                if len(found) == len(wanted):
                    break
    except Exception as exc:  # noqa: BLE001
        err = read_error(exc)
        for i in sorted(wanted - set(found)):
            found[i] = Record(i, None, None, err)
    for i in sorted(wanted):
        yield found.get(i) or Record(i, None, None, "read_error:not_found")


def _fetch_ids_task(
    rows: pa.Table, units: list[dict], parts: list[str], data: dict, uri: str
) -> dict[str, Any]:
    """Fetch the ids of ``rows`` (``id``, ``shard`` for Parquet pools, ``label``) into one part file."""
    d = DataSection(**data)
    out = _Part(d)
    skip = SkipRules(d.skip)
    ids = rows.column("id").to_pylist()
    labels = rows.column("label").to_pylist() if "label" in rows.column_names else [None] * len(ids)
    label_of = dict(zip(ids, labels))
    if units:  # Parquet rows, by shard
        by_shard: dict[str, set[str]] = collections.defaultdict(set)
        for i, s in zip(ids, rows.column("shard").to_pylist()):
            by_shard[s].add(i)
        for unit in units:
            for rec in _parquet_members(unit, parts, by_shard[unit["shard"]], d, out):
                out.add(rec)
        return out.write(uri)
    plain = [i for i in ids if names.split_member(i)[1] is None]
    for rid, (data_bytes, err) in zip(plain, fetch_many(plain)):
        out.add(Record(rid, data_bytes, label_of.get(rid), err))
    tars: dict[str, set[str]] = collections.defaultdict(set)
    for i in ids:
        obj, member = names.split_member(i)
        if member is not None:
            tars[obj].add(i)
    for tar_id, wanted in sorted(tars.items()):
        for rec in _tar_members(tar_id, wanted, skip):
            out.add(rec)
    return out.write(uri)


def _run(calls: list[tuple], fn) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        return [fn(*args) for args in calls]
    remote = ray.remote(fn).options(num_cpus=FETCH_CPUS)
    return ray.get([remote.remote(*args) for args in calls])


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    failed: collections.Counter = collections.Counter()
    for r in results:
        failed.update(r["failed"])
    return {
        "rows": sum(r["rows"] for r in results),
        "usable": sum(r["usable"] for r in results),
        "failed": dict(sorted(failed.items())),
        "bytes_read": sum(r["bytes_read"] for r in results),
        "files": len(results),
    }


def part_uri(out_dir: str, task: int) -> str:
    return storage.join(out_dir, f"part-{task:06d}.parquet")


def fetch_shards(units: pa.Table, parts: list[str], data: DataSection, out_dir: str) -> dict[str, Any]:
    """Every row of the shards of ``units`` (a plan's shard index) into ``out_dir``."""
    rows = units.select(list(UNIT_COLUMNS)).to_pylist()
    calls = [
        (rows[i : i + SHARDS_PER_TASK], list(parts), dataclasses.asdict(data), part_uri(out_dir, k))
        for k, i in enumerate(range(0, len(rows), SHARDS_PER_TASK))
    ]
    return _merge(_run(calls, _fetch_shards_task))


def fetch_ids(
    rows: pa.Table, pool_units: pa.Table | None, parts: list[str], data: DataSection, out_dir: str
) -> dict[str, Any]:
    """The objects whose ids ``rows`` holds (``id``, optional ``label``; ``shard`` when ``pool_units``, the
    shard index of a Parquet pool, is given) into ``out_dir``: the cost is set by ``len(rows)``, not by the
    pool."""
    data_dict = dataclasses.asdict(data)
    # sorted, so that a tar's members (and a Parquet shard's rows) come together: one read of each per task
    rows = rows.sort_by([("shard", "ascending"), ("id", "ascending")] if pool_units is not None else "id")
    calls = []
    for k, i in enumerate(range(0, rows.num_rows, IDS_PER_TASK)):
        chunk = rows.slice(i, IDS_PER_TASK)
        units: list[dict] = []
        if pool_units is not None:
            hit = pc.is_in(pool_units["shard"], value_set=pc.unique(chunk.column("shard")))
            units = pool_units.filter(hit).select(list(UNIT_COLUMNS)).to_pylist()
            if len(units) != len(pc.unique(chunk.column("shard"))):
                raise ValueError(f"{out_dir}: some ids name shards that the pool's plan does not hold")
        calls.append((chunk, units, list(parts), data_dict, part_uri(out_dir, k)))
    return _merge(_run(calls, _fetch_ids_task))


def read_parts(out_dir: str) -> list[str]:
    """The part files of a fetched set."""
    return storage.list_files(out_dir, (".parquet",))
