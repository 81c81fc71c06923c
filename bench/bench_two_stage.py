"""Two-stage K-center on Ray actors against single-stage greedy, side by side on one machine.

    python -m bench.bench_two_stage           # k = 100,000 over 150,000 x 128, init 10,000, 2 shards
    python -m bench.bench_two_stage --small   # k = 10,000 over 15,000 x 128, init 1,000

Prints, for both: wall time and the exact covering radius of the whole candidate set by init + picks; then
the wall-time ratio (goal: two-stage at most 1/1.3 of single-stage), the radius ratio (goal <= 1.10), the
bound two-stage reports (which must cover the exact radius), the shard sizes, budgets and rounds, and the
driver's resident-set growth during two-stage (goal < 100 MB: the points are put in the object store once
and each shard actor takes its own rows). Data as in bench_kcenter (clustered synthetic embeddings).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench import RssSampler, current_rss, load1
from bench.bench_kcenter import make_embeddings
from mak_ray.kcenter import greedy_k_center, two_stage_k_center
from mak_ray.kcenter._backend import Ops
from mak_ray.kcenter.greedy import prepare_points, to_radius
from mak_ray.kcenter.nearest import nearest_init


def full_radius(x: np.ndarray, centers: np.ndarray) -> float:
    """Exact cosine covering radius of ``x`` by ``centers``."""
    xn, cn = prepare_points("x", x, "cosine"), prepare_points("c", centers, "cosine")
    d2, _, _ = nearest_init(Ops(), xn, (xn * xn).sum(1), cn)
    return float(to_radius(d2.max(), "cosine"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--n", type=int, default=150_000)
    ap.add_argument("--init", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()
    n, m, k = (15_000, 1_000, 10_000) if args.small else (args.n, args.init, args.k)
    x = make_embeddings(n, 128, seed=0)
    init = make_embeddings(m, 128, seed=1, cluster_ids=np.arange(0, 100, 2))

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.get(ray.remote(lambda: 0).remote())  # warm a worker so start-up is not billed to two-stage
        print(
            f"two-stage K-center: k={k:,} over N={n:,} x 128, init={m:,}, {args.shards} spatial shards "
            f"on Ray actors (2 CPUs)   load avg {load1()}"
        )
        t0 = time.perf_counter()
        single, _ = greedy_k_center(x, k, init)
        t_single = time.perf_counter() - t0
        stats: dict = {}
        before = current_rss()
        t0 = time.perf_counter()
        with RssSampler() as rss:
            ids, radii = two_stage_k_center(x, k, init, shards=args.shards, stats=stats)
        t_two = time.perf_counter() - t0
    finally:
        ray.shutdown()
    r_single = full_radius(x, np.vstack([init, x[single]]))
    r_two = full_radius(x, np.vstack([init, x[ids]]))
    print(f"  single-stage greedy:   {t_single:8.2f} s   full-set radius (1-cos) {r_single:.5f}")
    print(f"  two-stage on Ray:      {t_two:8.2f} s   full-set radius (1-cos) {r_two:.5f}")
    print(
        f"  shards {stats['shard_sizes']}, budgets {stats['per_shard_k']}, union {stats['union_size']:,}, "
        f"rounds {stats['rounds']}"
    )
    print(
        f"  reported bound {stats['radius_bound']:.5f} >= exact {r_two:.5f}: {r_two <= stats['radius_bound'] + 1e-6}"
    )
    print(f"  wall-time ratio two-stage / single: {t_two / t_single:.3f}   (goal <= {1 / 1.3:.3f})")
    print(f"  radius ratio two-stage / single:    {r_two / r_single:.4f}   (goal <= 1.10)")
    print(f"  driver RSS growth during two-stage: {(rss.peak - before) / 2**20:.1f} MiB (goal < 100)")
    print(f"  load avg after {load1()}")


if __name__ == "__main__":
    main()
