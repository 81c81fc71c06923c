"""The Ray Dataset that SimCLR (pre)training streams: the target set, plus selected pool images for retraining.

Selected pool images are read back from the pool itself (only the shards that hold them, found through the
score output's ``shard`` column), so retraining sees exactly the bytes that were scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from mak_ray.config import MakConfig
from mak_ray.layout import ShardedOutput

log = logging.getLogger(__name__)


def shards_holding(scores: ShardedOutput, ids: Sequence[str]) -> dict[str, str]:
    """``{id: pool shard id}`` of the usable (scored) row of each of ``ids``, streamed from the score output
    (never the whole pool at once). An id held by several Parquet shards has one usable row (the others
    failed as ``duplicate_id``), so this names the copy that was scored."""
    from mak_ray.score import iter_score_columns

    wanted = pa.array([str(i) for i in ids], pa.string())
    where: dict[str, str] = {}
    for batch in iter_score_columns(scores.root, ["id", "shard", "error"]):
        hit = batch.filter(
            pc.and_(pc.is_in(batch.column("id"), value_set=wanted), pc.is_null(batch["error"]))
        )
        where.update(zip(hit.column("id").to_pylist(), hit.column("shard").to_pylist()))
    missing = [i for i in ids if i not in where]
    if missing:
        raise ValueError(
            f"{len(missing)} selected ids have no scored row in the score output, e.g. {missing[:3]}"
        )
    return where


def training_dataset(
    cfg: MakConfig,
    target_uri: str,
    extra_pool_ids: Sequence[str] | None = None,
    scores: ShardedOutput | None = None,
):
    """Rows ``{image}`` (uint8 [S, S, 3]) of the target set, plus the given pool ids (found through the
    ``scores`` output); failed rows dropped."""
    from mak_ray.data import image_dataset, keep_rows, plan_from_config

    ds = image_dataset(plan_from_config(target_uri, cfg.data), cfg.data)
    if extra_pool_ids:
        if scores is None:
            raise ValueError("extra pool ids need the score output that holds them")
        where = shards_holding(scores, extra_pool_ids)
        wanted = set(where.values())
        pool_shards = [s for s in plan_from_config(cfg.data.pool, cfg.data) if s.shard_id in wanted]
        extra = keep_rows(image_dataset(pool_shards, cfg.data), cfg.data, at=where)
        ds = ds.union(extra)
        log.info(
            "training set: target plus %d selected pool images from %d shards",
            len(extra_pool_ids),
            len(pool_shards),
        )
    return keep_rows(ds, cfg.data, usable_only=True, columns=["image"])
