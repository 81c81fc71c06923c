"""Sharded two-stage greedy K-center on Ray.

Stage 1: every shard runs exact greedy K-center on its own Ray task, seeded
with the same ``init`` (put in the object store once), and keeps a local
coreset.  Stage 2: greedy K-center over the union of the coresets picks ``k``
points, again seeded with ``init``.

Radius bound (what the tests check).  Let ``r1_j`` be shard j's final
stage-1 radius and ``r2`` the final stage-2 radius over the union, all in the
metric's Euclidean form (``e = sqrt(2 * (1 - cos))`` for cosine).  Every
candidate x of shard j is within ``r1_j`` of an init point or a coreset point
u, and u is within ``r2`` of init or a final pick, so by the triangle
inequality the covering radius of the FULL candidate set by init + picks is

    R_full <= max_j r1_j + r2            (euclidean)
    R_full <= (sqrt(max r1) + sqrt(r2))^2 (cosine distance, since 1-cos = e^2/2)

Default per-shard budget: ``ceil(2 * k * n_s / N)`` clipped to [1, n_s], so
the union holds about 2k points; pass ``per_shard_k`` (an int for all shards
or one int per shard) to change it.  The union must hold at least k points.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .kcenter import greedy_k_center, prepare_points
from .validate import check_k, check_metric, check_same_dim

log = logging.getLogger(__name__)


def default_per_shard_k(k: int, sizes: Sequence[int]) -> list[int]:
    """About 2k in total, in proportion to shard size: ceil(2 k n_s / N) clipped to [1, n_s]."""
    total = sum(sizes)
    return [min(n_s, max(1, math.ceil(2 * k * n_s / total))) for n_s in sizes]


def _split_shard(i: int, shard: Any, offset: int) -> tuple[np.ndarray, Any]:
    if isinstance(shard, tuple):
        if len(shard) != 2:
            raise ValueError(f"shard {i}: expected an array or an (ids, embeddings) pair")
        ids, emb = shard
        ids = np.asarray(ids)
        if len(ids) != len(emb):
            raise ValueError(f"shard {i}: {len(ids)} ids for {len(emb)} embeddings")
        return ids, emb
    return np.arange(offset, offset + len(shard), dtype=np.int64), shard


def two_stage_k_center(
    shards: Sequence[Any],
    k: int,
    init: Any = None,
    *,
    per_shard_k: int | Sequence[int] | None = None,
    metric: str = "cosine",
    use_ray: bool = True,
    num_cpus: float = 1,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` points from sharded candidates: ``(global ids in pick order, stage-2 radii)``.

    ``shards``: a list of [n_s, D] arrays (ids are then positions in their
    concatenation) or of ``(ids, embeddings)`` pairs (those ids come back).
    ``use_ray=False`` runs stage 1 in-process with identical results.
    ``stats`` (a dict) receives ``stage1_radius`` per shard, ``per_shard_k``
    and ``radius_bound`` (the documented bound on the full-set radius).
    """
    metric = check_metric(metric)
    if len(shards) == 0:
        raise ValueError("shards is empty")
    ids_list, embs = [], []
    offset = 0
    for i, shard in enumerate(shards):
        ids, emb = _split_shard(i, shard, offset)
        emb = prepare_points(f"shard {i}", emb, metric)
        if len(emb) == 0:
            raise ValueError(f"shard {i} is empty")
        if embs:
            check_same_dim("shard 0", embs[0], f"shard {i}", emb)
        ids_list.append(ids)
        embs.append(emb)
        offset += len(emb)
    sizes = [len(e) for e in embs]
    k = check_k(k, sum(sizes))
    init_np = None if init is None else prepare_points("init", init, metric)
    if init_np is not None:
        check_same_dim("shard 0", embs[0], "init", init_np)

    if per_shard_k is None:
        budgets = default_per_shard_k(k, sizes)
    elif isinstance(per_shard_k, (int, np.integer)):
        budgets = [min(int(per_shard_k), n_s) for n_s in sizes]
    else:
        budgets = [min(int(b), n_s) for b, n_s in zip(per_shard_k, sizes, strict=True)]
    if any(b <= 0 for b in budgets):
        raise ValueError(f"per_shard_k must be positive, got {per_shard_k}")
    if sum(budgets) < k:
        raise ValueError(f"the per-shard budgets {budgets} add up to {sum(budgets)} < k={k}")

    stage1 = _run_stage1(embs, budgets, init_np, metric, use_ray, num_cpus)
    local = [p for p, _ in stage1]
    r1 = np.array([r[-1] for _, r in stage1], dtype=np.float64)
    union = np.concatenate([e[p] for e, p in zip(embs, local)])
    union_ids = np.concatenate([ids[p] for ids, p in zip(ids_list, local)])
    picks, radii = greedy_k_center(union, k, init_np, metric=metric)
    if stats is not None:
        r2 = float(radii[-1])
        if metric == "cosine":
            bound = (math.sqrt(r1.max()) + math.sqrt(r2)) ** 2
        else:
            bound = float(r1.max()) + r2
        stats.update(stage1_radius=r1, per_shard_k=budgets, union_size=len(union), radius_bound=bound)
    log.info("two-stage k-center: %d shards, union %d, k %d", len(embs), len(union), k)
    return union_ids[picks], radii


def _run_stage1(
    embs: list[np.ndarray],
    budgets: list[int],
    init: np.ndarray | None,
    metric: str,
    use_ray: bool,
    num_cpus: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    if not use_ray:
        return [greedy_k_center(e, b, init, metric=metric) for e, b in zip(embs, budgets)]
    import ray

    task = ray.remote(_shard_greedy).options(num_cpus=num_cpus)
    init_ref = ray.put(init)
    refs = [task.remote(e, b, init_ref, metric) for e, b in zip(embs, budgets)]
    return ray.get(refs)


def _shard_greedy(
    emb: np.ndarray, k: int, init: np.ndarray | None, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    return greedy_k_center(emb, k, init, metric=metric)
