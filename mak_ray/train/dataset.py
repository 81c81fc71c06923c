"""The Ray Datasets that SimCLR (pre)training streams: rows ``{image}`` (uint8 [S, S, 3]), failed rows dropped.

- Pretraining reads the target set through its plan (:func:`training_dataset`).
- Retraining reads what it trains on from Parquet fetched once (:func:`fetch_target`, :func:`fetch_selection`,
  :func:`fetched_dataset`): the target set and a method's selected pool objects, fetched by id
  (:mod:`mak_ray.data.fetch`), so every method and every epoch reads only those rows, whatever the pool's size.
  Retraining sees exactly the bytes that were scored: the same objects, and for Parquet pools the row of the
  shard whose copy of an id was scored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mak_ray import storage
from mak_ray.config import DataSection, MakConfig
from mak_ray.data import Plan
from mak_ray.layout import SelectionOutput, ShardedOutput

log = logging.getLogger(__name__)

SCAN_FILES_PER_TASK = 64
DECODE_BATCH_ROWS = 256


def training_dataset(cfg: MakConfig, target_uri: str):
    """Rows ``{image}`` of every usable image of ``target_uri`` (read through its plan)."""
    from mak_ray.data import image_dataset, keep_rows
    from mak_ray.data.manifest import plan_for

    plan = plan_for(cfg, target_uri)
    ds = image_dataset(plan.shard_table(), plan.part_uris, cfg.data)
    return keep_rows(ds, cfg.data, usable_only=True, columns=["image"])


# ------------------------------------------------------------------------------------------- fetched sets


def fetch_target(cfg: MakConfig, plan: Plan, out_dir: str) -> dict[str, Any]:
    """Every object of the target set (its ``plan``) into ``out_dir`` (see :mod:`mak_ray.data.fetch`)."""
    from mak_ray.data.fetch import fetch_shards

    return fetch_shards(plan.shard_table(), plan.part_uris, cfg.data, out_dir)


def _scan_shards(files: list[str], wanted: pa.Array) -> pa.Table:
    """``id``, ``shard`` of the usable rows of ``files`` (score part files) whose id is in ``wanted``."""
    out = []
    for f in files:
        fs, path = storage.filesystem(f)
        with fs.open_input_file(path) as fh:
            t = pq.read_table(fh, columns=["id", "shard", "error"])
        hit = pc.and_(pc.is_in(t["id"], value_set=wanted), pc.is_null(t["error"]))
        out.append(t.filter(hit).select(["id", "shard"]))
    return (
        pa.concat_tables(out)
        if out
        else pa.table({"id": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
    )


def scored_shards(scores: ShardedOutput, ids: pa.Array) -> pa.Table:
    """``id``, ``shard`` of the scored (usable) row of each of ``ids``, found by Ray tasks over the score
    output's id/shard/error columns. An id held by several Parquet shards has one usable row (the others
    failed as ``duplicate_id``), so this names the copy that was scored."""
    import ray

    from mak_ray.score import part_files

    files = part_files(scores.root)
    groups = [files[i : i + SCAN_FILES_PER_TASK] for i in range(0, len(files), SCAN_FILES_PER_TASK)]
    if not ray.is_initialized():
        return pa.concat_tables([_scan_shards(g, ids) for g in groups])
    wanted = ray.put(ids)
    task = ray.remote(_scan_shards).options(num_cpus=0.5)
    return pa.concat_tables(ray.get([task.remote(g, wanted) for g in groups]))


def selection_rows(sel: SelectionOutput, pool: Plan, scores: ShardedOutput) -> pa.Table:
    """``id``, ``label`` (and, for a Parquet pool, ``shard``) of a method's selected objects."""
    table = storage.read_parquet(sel.parquet)
    cols = [c for c in ("id", "label", "shard") if c in table.column_names]
    table = table.select(cols)
    if "label" not in cols:
        table = table.append_column("label", pa.nulls(table.num_rows, pa.string()))
    if pool.format == "parquet" and "shard" not in cols:
        where = scored_shards(scores, table.column("id").combine_chunks())
        table = table.join(where, keys="id", join_type="left outer")
        missing = table.filter(pc.is_null(table["shard"]))
        if missing.num_rows:
            raise ValueError(
                f"{missing.num_rows} selected ids have no scored row in the score output, "
                f"e.g. {missing.column('id').to_pylist()[:3]}"
            )
    return table


def fetch_selection(
    cfg: MakConfig, sel: SelectionOutput, pool: Plan, scores: ShardedOutput, out_dir: str
) -> dict:
    """A method's selected pool objects into ``out_dir``, by id (see :mod:`mak_ray.data.fetch`)."""
    from mak_ray.data.fetch import fetch_ids

    rows = selection_rows(sel, pool, scores)
    units = pool.shard_table() if pool.format == "parquet" else None
    return fetch_ids(rows, units, pool.part_uris, cfg.data, out_dir)


def _read_decoded(batch: dict[str, np.ndarray], data: dict) -> Iterator[dict[str, np.ndarray]]:
    """The usable rows of each fetched part file in ``batch``, decoded, in batches of ``DECODE_BATCH_ROWS``."""
    from mak_ray.data.decode import decode_image

    d = DataSection(**data)
    for uri in batch["file"]:
        fs, path = storage.filesystem(str(uri))
        with fs.open_input_file(path) as f:
            for rb in pq.ParquetFile(f).iter_batches(DECODE_BATCH_ROWS, columns=["image", "error"]):
                images = []
                for img, err in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()):
                    if err is None and img is not None:
                        arr, _ = decode_image(img, d.image_size, d.max_pixels)
                        if arr is not None:
                            images.append(arr)
                if images:
                    yield {"image": np.stack(images)}


def fetched_dataset(cfg: MakConfig, dirs: list[str]):
    """Rows ``{image}`` of every usable row fetched into ``dirs``: one read task per part file, decoded as it
    streams (each epoch), no other storage read."""
    import ray

    from mak_ray.data.fetch import read_parts

    files = [f for d in dirs for f in read_parts(d)]
    if not files:
        raise ValueError(f"no fetched rows under {dirs}")
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(
        _read_decoded,
        batch_size=1,
        fn_kwargs={"data": dataclasses.asdict(cfg.data)},
        num_cpus=cfg.data.read_cpus,
    )
