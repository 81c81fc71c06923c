"""Sharded two-stage greedy K-center on Ray, with verified refinement of stage 2.

Stage 1: every shard runs exact greedy K-center on its own Ray task, seeded
with the same ``init`` (put in the object store once), and keeps a local
coreset.  Stage 2: greedy K-center over the union of the coresets picks ``k``
points, again seeded with ``init``.

Refinement (why: plain two-stage missed the goal).  Measured on the
clustered 128-d bench data (4 shards), the plain union greedy gave a full-set
radius 1.27-1.44x single-stage greedy, and a larger stage-1 budget did not fix
it (k per shard: 1.42x at 100k; 4k per shard at 20k: 1.16x mean): in high
dimension a point's offset from its coreset representative adds to the
representative's distance from the picks.  A radius-aware stage 2 (rank by
distance + carried stage-1 radius) was worse (1.19-1.46x).  So every shard
*replays* the stage-2 picks in order over all its points (pruned like the
greedy, see ``greedy.replay_excess``) and reports the points that were ever
farther from init + the first i picks than the union's radius after i picks;
up to its stage-1 budget of them, most exceeding first, join the union and
stage 2 runs again.  When no shard reports a point, the stage-2 greedy
radius after every pick is the full-set radius, so the picks are those of
single-stage greedy on all candidates (up to ties and float rounding);
measured: converged in 3-4 rounds at 20k (k=200) and 8 at 100k (k=1000),
ratio 1.000.  At most ``MAX_ROUNDS`` rounds run; the round with the smallest
full-set radius (ties: the earliest) is returned.

Radius bound (what the tests check).  Let ``r1_j`` be shard j's final
stage-1 radius and ``r2`` the final stage-2 radius over the returned round's
union, all in the metric's Euclidean form (``e = sqrt(2 * (1 - cos))`` for
cosine).  Every candidate x of shard j is within ``r1_j`` of an init point or
a stage-1 coreset point u (the union always holds the coresets), and u is
within ``r2`` of init or a final pick, so by the triangle inequality the
covering radius of the FULL candidate set by init + picks is

    R_full <= max_j r1_j + r2            (euclidean)
    R_full <= (sqrt(max r1) + sqrt(r2))^2 (cosine distance, since 1-cos = e^2/2)

and the replay also measures R_full exactly (``stats['full_radius']``).

Default per-shard budget: ``ceil(2 * k * n_s / N)`` clipped to [1, n_s], so
the stage-1 union holds about 2k points; pass ``per_shard_k`` (an int for all
shards or one int per shard) to change it.  The union must hold at least k
points.  It also caps how many points a shard adds per round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mak_ray.validate import check_k, check_metric, check_same_dim

from .greedy import greedy_with_init_state, prepare_points, replay_excess, to_radius

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
    # one working dtype (float32 unless a shard is float64), as greedy_k_center casts init
    dtype = np.result_type(*embs)
    embs = [e.astype(dtype, copy=False) for e in embs]
    if init_np is not None:
        init_np = init_np.astype(dtype, copy=False) if len(init_np) else None

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

    stage1 = _run_stage1(embs, budgets, init_np, use_ray, num_cpus)
    picks, d2s, info = _refine(embs, budgets, init_np, stage1, k, use_ray, num_cpus)
    ids_all = [ids_list[j][info["union_local"][info["union_shard"] == j]] for j in range(len(embs))]
    union_ids = np.concatenate(ids_all)
    r1 = np.array([to_radius(r[-1], metric) for _, r, _ in stage1], dtype=np.float64)
    radii = to_radius(d2s, metric)
    if stats is not None:
        r2 = float(radii[-1])
        if metric == "cosine":
            bound = (math.sqrt(r1.max()) + math.sqrt(r2)) ** 2
        else:
            bound = float(r1.max()) + r2
        stats.update(
            stage1_radius=r1,
            per_shard_k=budgets,
            union_size=len(union_ids),
            radius_bound=bound,
            full_radius=float(to_radius(info["full_d2"], metric)),
            rounds=info["rounds"],
            converged=info["converged"],
            added_per_round=info["added"],
        )
    log.info(
        "two-stage k-center: %d shards, union %d, k %d, %d rounds, converged %s",
        len(embs),
        len(union_ids),
        k,
        info["rounds"],
        info["converged"],
    )
    return union_ids[picks], radii


MAX_ROUNDS = 10


def _refine(
    embs: list[np.ndarray],
    budgets: list[int],
    init: np.ndarray | None,
    stage1: list[tuple[np.ndarray, np.ndarray, Any]],
    k: int,
    use_ray: bool,
    num_cpus: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stage 2 with replay checks (module docstring): best round's (union picks, squared radii, info)."""
    shard_of = np.concatenate([np.full(len(p), j) for j, (p, _, _) in enumerate(stage1)])
    local = np.concatenate([p for p, _, _ in stage1])
    d0_max = -math.inf if init is None else max(float(st[0].max()) for _, _, st in stage1)
    if use_ray:
        import ray

        init_ref = ray.put(init)
        shard_refs = [(ray.put(e), ray.put(st)) for e, (_, _, st) in zip(embs, stage1)]
        task = ray.remote(replay_excess).options(num_cpus=num_cpus)
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    added: list[int] = []
    converged = False
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        order = np.lexsort((local, shard_of))  # union in concatenation order: ties as single-stage
        shard_of, local = shard_of[order], local[order]
        union = np.concatenate([embs[j][local[shard_of == j]] for j in range(len(embs))])
        picks, d2s, _ = greedy_with_init_state(union, k, init)
        centers = np.ascontiguousarray(union[picks])
        profile2 = np.concatenate([[math.inf if init is None else d0_max], d2s])
        if use_ray:
            c_ref = ray.put(centers)
            outs = ray.get([task.remote(e, init_ref, st, c_ref, profile2) for e, st in shard_refs])
        else:
            outs = [replay_excess(e, init, st, centers, profile2) for e, (_, _, st) in zip(embs, stage1)]
        full_d2 = max(o[1] for o in outs)
        if best is None or full_d2 < best[0]:
            best = (full_d2, picks, d2s, shard_of.copy(), local.copy())
        new_shard, new_local = [], []
        for j, (excess, _, _) in enumerate(outs):
            excess = np.array(excess)  # Ray hands back read-only arrays
            excess[local[shard_of == j]] = -np.inf  # union members are covered by definition
            over = np.flatnonzero(excess > 0.0)
            over = over[np.argsort(-excess[over], kind="stable")[: budgets[j]]]
            new_shard.append(np.full(len(over), j))
            new_local.append(over)
        n_new = sum(len(o) for o in new_local)
        added.append(n_new)
        if n_new == 0:
            converged = True
            break
        shard_of = np.concatenate([shard_of, *new_shard])
        local = np.concatenate([local, *new_local])
        log.info("two-stage round %d: full radius^2 %.5f, %d points join the union", rounds, full_d2, n_new)
    assert best is not None
    full_d2, picks, d2s, shard_of, local = best
    info = dict(
        union_shard=shard_of,
        union_local=local,
        full_d2=full_d2,
        rounds=rounds,
        converged=converged,
        added=added,
    )
    # union_ids must follow the union's row order: rows are grouped by shard in shard order
    return picks, d2s, info


def _run_stage1(
    embs: list[np.ndarray],
    budgets: list[int],
    init: np.ndarray | None,
    use_ray: bool,
    num_cpus: float,
) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """Per shard: (coreset picks, squared radii, nearest-init state reused by the replays)."""
    if not use_ray:
        return [greedy_with_init_state(e, b, init) for e, b in zip(embs, budgets)]
    import ray

    task = ray.remote(greedy_with_init_state).options(num_cpus=num_cpus)
    init_ref = ray.put(init)
    refs = [task.remote(e, b, init_ref) for e, b in zip(embs, budgets)]
    return ray.get(refs)
