"""Two-stage greedy K-center: spatial shards run greedy apart (on Ray actors), then one merge by pick distance.

Stage 1: the points are cut into ``S`` spatial shards (spherical K-means on a sample; each point goes to its
nearest centroid), and each shard runs the exact greedy K-center (:func:`~mak_ray.kcenter.greedy_k_center`)
on its own points, seeded with the same ``init``, for a budget of ``b_j = ceil(SLACK * k * n_j / N)`` picks
(``per_shard_k`` overrides it). A pick's *pick distance* is the shard's radius just before it.

Stage 2, the merge: the ``k`` picks with the largest pick distances over all shards (ties: shard, then pick
order). Each shard's pick distances fall, so the selection is every shard's first ``c_j`` picks. A shard that
spent its whole budget while its radius is still above the merge's cut is cut short: its budget doubles and it
runs again (only those shards; the earlier picks repeat exactly), until no shard is cut short.

Bound: each point of shard ``j`` is within ``r_j`` of ``init`` and shard ``j``'s selected picks, ``r_j`` being
the shard's radius after its ``c_j`` picks. So the covering radius of all the points by ``init`` and the
selection is at most ``R = max_j r_j``, which is the next pick distance in the merged order: the radius
reported after the last pick. Points of a shard near its border may be covered closer by another shard's
picks, so the true radius can be smaller, never larger. With one shard the picks are the greedy's own.

Spatial shards matter: with shards drawn at random, every region's points are split over all shards and
each shard covers its part alone, so the radius grows with the number of shards.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mak_ray.validate import check_k, check_metric, check_same_dim

from .greedy import greedy_k_center, prepare_points, to_radius

log = logging.getLogger(__name__)

SLACK = 1.1  # stage-1 budgets add up to about SLACK * k
SAMPLE_PER_SHARD = 256  # points per shard in the sample the spatial centroids are fitted on
MAX_ROUNDS = 8


def spatial_centroids(sample: np.ndarray, shards: int, metric: str, seed: int = 0) -> np.ndarray:
    """``shards`` centroids of ``sample`` (spherical K-means for cosine, plain for euclidean)."""
    import faiss

    x = np.ascontiguousarray(prepare_points("sample", sample, metric), dtype=np.float32)
    shards = min(shards, len(x))
    km = faiss.Kmeans(x.shape[1], shards, niter=20, seed=int(seed), spherical=metric == "cosine")
    km.cp.min_points_per_centroid = 1
    km.train(x)
    return np.asarray(km.centroids, np.float32).reshape(shards, x.shape[1])


def nearest_centroid(points: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """Index of each point's nearest centroid (blocked, so memory stays bounded)."""
    x = prepare_points("points", points, metric).astype(np.float32, copy=False)
    c = centroids.astype(np.float32)
    sqc = (c * c).sum(1)
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), 65536):
        b = x[s : s + 65536]
        out[s : s + 65536] = (sqc[None, :] - 2.0 * b @ c.T).argmin(1)
    return out


@dataclass
class ShardPicks:
    """One shard's stage-1 result: its picks (local indices), each pick's distance, its radius after the
    last pick (0 when it picked all its points), and the wall and CPU seconds of the run (the CPU seconds of
    the shard's process: on a shared machine they show the work apart from the waiting)."""

    picks: np.ndarray
    pick_distance: np.ndarray
    final_radius: float
    size: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0


class ShardWorker:
    """Stage 1 for one spatial shard: holds its points (and the init) and runs the greedy for a budget.

    ``load`` returns the shard's points (already restricted to the shard); it runs where the worker runs, so
    on Ray the points are read there and never pass through the caller.
    """

    def __init__(self, load: Callable[[], Any], init: Any, metric: str, device: str = "cpu") -> None:
        loaded = load()
        # a loader may return (points, rows): rows (any table with take()) travel with the points
        self.points, self.rows = loaded if isinstance(loaded, tuple) else (loaded, None)
        self.init = None if init is None else np.asarray(init)
        self.metric, self.device = metric, device
        self.last: ShardPicks | None = None

    def size(self) -> int:
        return len(self.points)

    def run(self, budget: int) -> ShardPicks:
        n = len(self.points)
        budget = min(int(budget), n)
        if budget <= 0:
            return ShardPicks(np.zeros(0, np.int64), np.zeros(0), 0.0 if n == 0 else math.inf, n)
        t0, c0 = time.perf_counter(), time.process_time()
        picks, radii = greedy_k_center(self.points, budget, self.init, metric=self.metric, device=self.device)
        first = _distance_to(self.points[picks[0]], self.init, self.metric)
        pick_distance = np.concatenate([[first], radii[:-1]])
        final = 0.0 if budget == n else float(radii[-1])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.last = ShardPicks(np.asarray(picks, np.int64), pick_distance, final, n, seconds, cpu)
        return self.last

    def selected_rows(self, count: int) -> Any:
        """The rows of the last run's first ``count`` picks, in pick order (None for no rows)."""
        import pyarrow as pa

        if count == 0 or self.rows is None or self.last is None:
            return None
        return self.rows.take(pa.array(self.last.picks[:count]))


def _distance_to(point: np.ndarray, init: np.ndarray | None, metric: str) -> float:
    """The metric distance from ``point`` to its nearest init point (inf without init)."""
    if init is None or len(init) == 0:
        return math.inf
    p = prepare_points("point", point[None, :], metric)
    c = prepare_points("init", init, metric)
    d2 = float(np.maximum(((c - p) ** 2).sum(1), 0.0).min())
    return float(to_radius(d2, metric))


@dataclass
class Merge:
    """The merge of every shard's picks: ``order`` (shard, pick index) of the ``k`` selected picks, the radius
    bound after each, how many picks each shard gives, and the shards cut short by their budget."""

    order: np.ndarray  # [k, 2]: (shard, index into that shard's picks)
    radii: np.ndarray  # [k]: the bound R after each pick
    counts: np.ndarray  # [S]
    cut_short: list[int]


def merge_picks(results: list[ShardPicks], k: int) -> Merge:
    """The ``k`` picks of largest pick distance (ties: shard, then pick order).

    Each shard also contributes a trailing entry, its radius after its last pick. In the merged order the
    radius after a pick is then the distance of the next entry, raised by the trailing entry of any shard
    whose picks all came earlier (a shard cut short by its budget).
    """
    dist, shard, idx, real = [], [], [], []
    for j, r in enumerate(results):
        m = len(r.picks)
        dist.append(np.concatenate([r.pick_distance, [r.final_radius]]))
        shard.append(np.full(m + 1, j))
        idx.append(np.arange(m + 1))
        real.append(np.concatenate([np.ones(m, bool), [False]]))
    dist_a, shard_a, idx_a, real_a = (np.concatenate(v) for v in (dist, shard, idx, real))
    order = np.lexsort((idx_a, shard_a, -dist_a))
    d, is_real = dist_a[order], real_a[order]
    take = np.flatnonzero(is_real)
    if len(take) < k:
        raise ValueError(f"the shards picked {len(take)} points in all, fewer than k={k}")
    pos = take[:k]
    passed = np.maximum.accumulate(np.where(is_real, -np.inf, d))  # trailing entries seen so far
    radii = np.maximum(d[pos + 1], passed[pos])
    head = order[: pos[-1] + 1]
    cut_short = sorted(int(shard_a[i]) for i in head[~real_a[head]] if results[shard_a[i]].final_radius > 0)
    chosen = order[pos]
    counts = np.bincount(shard_a[chosen], minlength=len(results))
    return Merge(np.stack([shard_a[chosen], idx_a[chosen]], axis=1), radii, counts, cut_short)


def budgets(k: int, sizes: list[int], per_shard_k: int | None = None) -> list[int]:
    """``ceil(SLACK * k * n_j / N)`` per shard (or ``per_shard_k``), at most the shard's size."""
    total = sum(sizes)
    if per_shard_k is not None:
        return [min(int(per_shard_k), n) for n in sizes]
    return [min(n, max(1, math.ceil(SLACK * k * n / total))) for n in sizes]


def run_two_stage(
    workers: list[Any], k: int, per_shard_k: int | None, remote: bool
) -> tuple[Merge, dict, list[ShardPicks]]:
    """Stage 1 on ``workers`` (``ShardWorker``s, or their Ray actor handles with ``remote``), then the merge,
    repeating for shards cut short by their budget."""
    import ray

    def call(w, name, *args):
        return getattr(w, name).remote(*args) if remote else getattr(w, name)(*args)

    def get(x):
        return ray.get(x) if remote else x

    sizes = [int(s) for s in get([call(w, "size") for w in workers])]
    if sum(sizes) < k:
        raise ValueError(f"k={k} is larger than the number of points ({sum(sizes)})")
    b = budgets(k, sizes, per_shard_k)
    while sum(b) < k:  # explicit budgets that cannot hold k picks grow, as a cut-short shard's do
        b = [min(n, 2 * bj) for n, bj in zip(sizes, b)]
    results = get([call(w, "run", bj) for w, bj in zip(workers, b)])
    seconds = [r.seconds for r in results]
    cpu = [r.cpu_seconds for r in results]
    rounds = 1
    merged = merge_picks(results, k)
    while merged.cut_short and rounds < MAX_ROUNDS:
        rounds += 1
        for j in merged.cut_short:
            b[j] = min(sizes[j], 2 * b[j])
        redo = {j: call(workers[j], "run", b[j]) for j in merged.cut_short}
        for j, ref in redo.items():
            results[j] = get(ref)
            seconds[j] += results[j].seconds
            cpu[j] += results[j].cpu_seconds
        merged = merge_picks(results, k)
        log.info("two-stage round %d: shards %s ran again with larger budgets", rounds, merged.cut_short)
    info = {
        "shards": len(workers),
        "shard_sizes": sizes,
        "per_shard_k": b,
        "union_size": int(sum(len(r.picks) for r in results)),
        "rounds": rounds,
        "cut_short": merged.cut_short,
        "radius_bound": float(merged.radii[-1]),
        "shard_seconds": [round(v, 3) for v in seconds],  # every round's greedy runs, per shard
        "shard_cpu_seconds": [round(v, 3) for v in cpu],
    }
    return merged, info, results


def two_stage_k_center(
    points: Any,
    k: int,
    init: Any = None,
    *,
    shards: int = 4,
    per_shard_k: int | None = None,
    metric: str = "cosine",
    use_ray: bool = True,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` of ``points`` [N, D]: ``(indices in pick order, radius bound after each pick)``.

    ``stats`` (a dict) receives the shard sizes, budgets, union size, rounds and the bound.
    """
    metric = check_metric(metric)
    x = prepare_points("points", points, metric)
    k = check_k(k, len(x))
    init_np = None if init is None else prepare_points("init", init, metric)
    if init_np is not None:
        check_same_dim("points", x, "init", init_np)
        init_np = init_np.astype(x.dtype, copy=False) if len(init_np) else None
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), SAMPLE_PER_SHARD * shards), replace=False)]
    cells = nearest_centroid(x, spatial_centroids(sample, shards, metric, seed), metric)
    members = [np.flatnonzero(cells == j) for j in range(cells.max() + 1)]
    members = [m for m in members if len(m)]
    if use_ray:
        import ray

        actor = ray.remote(ShardWorker)
        x_ref = ray.put(x)
        workers = [actor.remote(_Rows(x_ref, m), init_np, metric) for m in members]
    else:
        workers = [ShardWorker(_Rows(x, m), init_np, metric) for m in members]
    merged, info, results = run_two_stage(workers, k, per_shard_k, use_ray)
    ids = np.array([members[s][results[s].picks[i]] for s, i in merged.order], dtype=np.int64)
    if stats is not None:
        stats.update(info)
    return ids, merged.radii


class _Rows:
    """A loader of some rows of an array (an object reference on Ray): what a shard worker holds."""

    def __init__(self, array: Any, rows: np.ndarray) -> None:
        self.array, self.rows = array, rows

    def __call__(self) -> np.ndarray:
        import ray

        a = ray.get(self.array) if isinstance(self.array, ray.ObjectRef) else self.array
        return np.ascontiguousarray(a[self.rows])
