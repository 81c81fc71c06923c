"""Benchmark 2: two-stage K-center on 4 shards with Ray (2 CPUs) vs single-stage greedy.

    python -m bench.bench_two_stage           # 100,000 x 128, 5,000 init, k = 1,000
    python -m bench.bench_two_stage --small   # 20,000 x 128, 1,000 init, k = 200

Prints the covering radius of the FULL candidate set (init + picks, exact)
for both, their ratio (goal <= 1.10), the documented bound, the refinement
rounds, whether the picks equal single-stage greedy, and the wall-time ratio
with the 1-minute load average (the machine may be shared).  Data as in
bench_kcenter (clustered synthetic embeddings).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench import load1
from bench.bench_kcenter import make_embeddings
from mak_ray.kcenter import greedy_k_center, two_stage_k_center
from mak_ray.kcenter._backend import Ops
from mak_ray.kcenter.greedy import prepare_points, to_radius
from mak_ray.kcenter.nearest import nearest_init


def full_radius(x: np.ndarray, centers: np.ndarray) -> float:
    """Exact cosine covering radius of ``x`` by ``centers``."""
    xn, cn = prepare_points("x", x, "cosine"), prepare_points("c", centers, "cosine")
    ops = Ops()
    d2, _, _ = nearest_init(ops, xn, (xn * xn).sum(1), cn)
    return float(to_radius(d2.max(), "cosine"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--init", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    n, m, k = (20_000, 1_000, 200) if args.small else (args.n, args.init, args.k)
    x = make_embeddings(n, 128, seed=0)
    init = make_embeddings(m, 128, seed=1, cluster_ids=np.arange(0, 100, 2))

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.get(ray.remote(lambda: 0).remote())  # warm a worker so start-up is not billed to two-stage
        print(f"two-stage K-center: N={n:,} x 128, init={m:,}, k={k:,}, {args.shards} shards, Ray on 2 CPUs")
        t0 = time.perf_counter()
        single, _ = greedy_k_center(x, k, init)
        t_single = time.perf_counter() - t0
        shards = np.array_split(x, args.shards)
        stats: dict = {}
        t0 = time.perf_counter()
        ids, _ = two_stage_k_center(shards, k, init, stats=stats)
        t_two = time.perf_counter() - t0
    finally:
        ray.shutdown()
    r_single = full_radius(x, np.vstack([init, x[single]]))
    r_two = full_radius(x, np.vstack([init, x[ids]]))
    print(f"  single-stage greedy:  {t_single:7.2f} s   full-set radius (1-cos) {r_single:.4f}")
    print(f"  two-stage on Ray:     {t_two:7.2f} s   full-set radius (1-cos) {r_two:.4f}")
    print(
        f"  per-shard budgets {stats['per_shard_k']}, final union {stats['union_size']}, "
        f"rounds {stats['rounds']} (points added per round {stats['added_per_round']}), "
        f"converged {stats['converged']}, picks equal single-stage: {np.array_equal(ids, single)}"
    )
    print(f"  radius ratio two-stage / single: {r_two / r_single:.4f}   (goal <= 1.10)")
    print(
        f"  documented bound (sqrt(max r1) + sqrt(r2))^2 = {stats['radius_bound']:.4f} >= {r_two:.4f}: "
        f"{r_two <= stats['radius_bound'] + 1e-6}"
    )
    print(f"  wall-time ratio two-stage / single: {t_two / t_single:.3f}   load avg {load1()}")


if __name__ == "__main__":
    main()
