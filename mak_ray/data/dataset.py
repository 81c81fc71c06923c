"""Shards -> a Ray Dataset of decoded rows, one read task per block of shards, errors captured per row.

``ray.data.read_images`` aborts the whole job on one corrupt file, so bytes are read and decoded here, in
``map_batches`` over a dataset of shard-index rows (id, kind, manifest part, row range: a few dozen bytes
each); each read task loads its shards' members from the manifest itself. Each shard streams out in batches
of rows:

    id (str), image (uint8 [h, w, 3] frame, see decode_frame; [1, 1, 3] zeros when the row failed),
    label (str | None),
    error (str | None), shard (str), row (int64: position within the shard),
    object_version (str | None: ``<size>:<version>`` of the listed object the row came from),
    shard_rows (int64: the shard's row count on its last row, 0 on every other row)

The shard's row count is only known once it has been read to the end (tar shards carry no index), so only
the last row carries it; consumers learn a shard is complete when the rows they have seen add up to it.

Ids are de-duplicated within a shard: the second and later rows with an id already seen in that shard are
failed rows with ``error = "duplicate_id"`` (their bytes are not decoded). Across shards, ids made from
URIs cannot collide; for Parquet ids, ``owners`` (from :func:`mak_ray.data.duplicates.cross_shard_owners`)
names the shard that keeps each id held by several, and rows of that id in any other shard fail the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray.config import DataSection
from mak_ray.data.decode import decode_frame, default_decode_size, frames_column, max_frame_pixels
from mak_ray.data.duplicates import id_digest
from mak_ray.data.readers import Record, iter_records
from mak_ray.data.sources import UNIT_COLUMNS, Shard, load_shard

OUTPUT_BATCH_BYTES = (
    32 * 1024 * 1024
)  # decoded images per yielded batch, so a batch never grows with the shard
DEFAULT_BATCH_ROWS = 256  # rows per yielded table (Ray joins a task's tables into larger blocks)
MAX_READ_BLOCKS = 4096  # more shards than this share read tasks (sequentially), keeping driver metadata small

DUPLICATE_ID = "duplicate_id"
_FAILED_FRAME = np.zeros((1, 1, 3), dtype=np.uint8)  # the image of a failed row


def _with_last(it: Iterator[Record]) -> Iterator[tuple[Record, bool]]:
    prev = next(it, None)
    while prev is not None:
        cur = next(it, None)
        yield prev, cur is None
        prev = cur


def text_or_none(v: Any) -> str | None:
    """None for a missing value in any form Ray hands back (None, NaN), else the text."""
    if v is None or (isinstance(v, (float, np.floating)) and v != v):
        return None
    return str(v)


def to_arrow(cols: dict[str, Any]) -> pa.Table:
    """A typed Arrow batch: lists of str/None become string columns, n-d arrays Ray tensor columns.

    Returning numpy object arrays instead would let Ray type an all-None ``error`` column as null, which
    comes back as float NaN; typed string columns come back as None, whatever the batch holds.
    """
    from ray.data.extensions import ArrowTensorArray

    arrays = {}
    for name, v in cols.items():
        if isinstance(v, (pa.Array, pa.ChunkedArray)):
            arrays[name] = v
        elif isinstance(v, np.ndarray) and v.ndim > 1:
            arrays[name] = ArrowTensorArray.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, np.ndarray) and v.dtype != object:
            arrays[name] = pa.array(v)
        else:
            arrays[name] = pa.array([text_or_none(x) for x in v], pa.string())
    return pa.table(arrays)


def read_shard(
    shard: Shard,
    data: DataSection,
    batch_rows: int | None = None,
    owners: dict[bytes, str] | None = None,
) -> Iterator[pa.Table]:
    """Decoded batches of one shard (see the module docstring for the columns and ``owners``)."""
    decode_size = data.decode_size or default_decode_size(data.image_size)
    if batch_rows is None:
        batch_rows = DEFAULT_BATCH_ROWS
    batch_rows = max(1, min(batch_rows, OUTPUT_BATCH_BYTES // (max_frame_pixels(decode_size) * 3)))
    seen: set[str] = set()
    ids: list[str] = []
    labels: list[str | None] = []
    errors: list[str | None] = []
    versions: list[str | None] = []
    frames: list[np.ndarray] = []
    row = 0
    first_row = 0
    total = 0

    def flush() -> dict[str, np.ndarray]:
        n = len(ids)
        shard_rows = np.zeros(n, dtype=np.int64)
        if total:
            shard_rows[-1] = total
        out = to_arrow(
            {
                "id": ids,
                "image": frames_column(frames),
                "label": labels,
                "error": errors,
                "shard": [shard.shard_id] * n,
                "row": np.arange(first_row, first_row + n, dtype=np.int64),
                "shard_rows": shard_rows,
                "object_version": versions,
            }
        )
        ids.clear(), labels.clear(), errors.clear(), versions.clear(), frames.clear()
        return out

    foreign = owners if owners and shard.kind == "parquet" else None
    for rec, last in _with_last(iter_records(shard, data)):
        err = rec.error
        if rec.id in seen:
            err = DUPLICATE_ID
        elif foreign is not None and foreign.get(id_digest(rec.id), shard.shard_id) != shard.shard_id:
            err = DUPLICATE_ID
        seen.add(rec.id)
        arr = None
        if err is None:
            arr, err = decode_frame(rec.data or b"", decode_size, data.max_pixels)
        frames.append(arr if arr is not None else _FAILED_FRAME)
        ids.append(rec.id)
        labels.append(rec.label)
        errors.append(err)
        versions.append(shard.version_of(row))
        row += 1
        if last:
            total = row
        if len(ids) == batch_rows or last:
            yield flush()
            first_row = row


def _read_units(
    batch: pa.Table,
    parts: list[str],
    data: dict,
    batch_rows: int | None,
    owners: dict[bytes, str] | None,
) -> Iterator[pa.Table]:
    section = DataSection(**data)
    for unit in batch.to_pylist():
        yield from read_shard(load_shard(unit, parts), section, batch_rows, owners)


def read_blocks(units: pa.Table, block_rows: int | None = None) -> list[pa.Table]:
    """The shard index cut into read blocks, one read task each.

    Without ``block_rows``, one shard per block. With it, consecutive shards are packed into one block while
    their rows add up to at most ``block_rows``: each read task costs the scheduler about the same whatever
    its size, so many small shards (a grown pool's residual shards, small sub-folders) share a few tasks
    instead of each paying for its own. A shard of unknown size (tar) or of ``block_rows`` or more is a
    block of its own. Either way, when there are more blocks than ``MAX_READ_BLOCKS`` consecutive ones are
    joined, keeping the driver's metadata small. Every shard stays whole within one block."""
    n = units.num_rows
    if block_rows is None:
        starts = np.arange(n)
    else:
        rows = pc.fill_null(units.column("rows"), block_rows).to_numpy().astype(np.int64)
        starts_list: list[int] = []
        held = block_rows  # rows in the block being filled: a full one makes the first shard start a block
        for i, r in enumerate(rows.tolist()):
            if held + r > block_rows:
                starts_list.append(i)
                held = 0
            held += r
        starts = np.array(starts_list, dtype=np.int64)
    if len(starts) > MAX_READ_BLOCKS:
        starts = starts[np.linspace(0, len(starts), MAX_READ_BLOCKS, endpoint=False).astype(int)]
    bounds = np.append(starts, n)
    return [units.slice(a, b - a) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()) if b > a]


def image_dataset(
    units: pa.Table | list[pa.Table],
    parts: list[str],
    data: DataSection,
    batch_rows: int | None = None,
    owners: dict[bytes, str] | None = None,
):
    """A lazy Ray Dataset of decoded rows over the shards of ``units`` (shard-index rows: ``UNIT_COLUMNS``,
    ``part`` indexing ``parts``; or that index already cut into read blocks by :func:`read_blocks`); nothing
    is read until it is consumed.

    ``batch_rows``: rows per table the read yields (default 256, fewer for large images). Ray joins a read
    task's tables into blocks of up to ``DataContext.target_max_block_size``, so a consumer that wants
    batches of a given size must ask ``map_batches`` for them, or slice the blocks itself as the scorer
    does. One read task per block (a table of ``units``: one shard each), reading its shards in turn
    (``batch_size=1`` over shard descriptions); a downstream ``map_batches`` with a row ``batch_size`` that
    fuses with this read makes Ray bundle that many *blocks* into one task.
    ``owners``: see the module docstring; pass the map computed over *all* planned shards, even when
    ``shards`` is a subset, so every run fails the same rows.
    """
    import dataclasses

    import ray

    blocks = read_blocks(units) if isinstance(units, pa.Table) else units
    blocks = [b.select(list(UNIT_COLUMNS)) for b in blocks if b.num_rows]
    if not blocks:
        raise ValueError("no shards to read")
    ds = ray.data.from_arrow(blocks)
    return ds.map_batches(
        _read_units,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "parts": list(parts),
            "data": dataclasses.asdict(data),
            "batch_rows": batch_rows,
            "owners": owners or None,
        },
        num_cpus=data.read_cpus,
    )


def _shard_id_keys(shards: Any, ids: Any) -> Any:
    """One string per (shard, id) pair; the separator cannot occur in a shard id."""
    return pc.binary_join_element_wise(shards, ids, "\x1f")


def _filter_rows(
    batch: pa.Table,
    wanted: pa.Array | None,
    usable_only: bool,
    columns: list[str] | None,
    wanted_at: pa.Array | None = None,
) -> pa.Table:
    if wanted is not None:
        batch = batch.filter(pc.is_in(batch["id"], value_set=wanted))
    if wanted_at is not None:
        batch = batch.filter(pc.is_in(_shard_id_keys(batch["shard"], batch["id"]), value_set=wanted_at))
    if usable_only:
        batch = batch.filter(pc.is_null(batch["error"]))
    return batch.select(columns) if columns else batch


def keep_rows(
    ds,
    data: DataSection,
    *,
    ids=None,
    at: dict[str, str] | None = None,
    usable_only: bool = False,
    columns: list[str] | None = None,
):
    """Filter a dataset from :func:`image_dataset` to ``ids`` and/or rows without error, keeping ``columns``.

    ``at`` (``{id: shard id}``) keeps each id only from the given shard: exact when ids repeat across shards.

    Arrow batches, because numpy batches can turn an all-null string column into NaN floats; and the read
    tasks' CPU share, so the filter fuses with the read instead of waiting for a whole free CPU.
    """
    wanted = None if ids is None else pa.array([str(i) for i in ids], pa.string())
    wanted_at = None
    if at is not None:
        wanted_at = _shard_id_keys(pa.array(list(at.values()), pa.string()), pa.array(list(at), pa.string()))
    return ds.map_batches(
        _filter_rows,
        batch_format="pyarrow",
        fn_kwargs={"wanted": wanted, "usable_only": usable_only, "columns": columns, "wanted_at": wanted_at},
        num_cpus=data.read_cpus,
    )
