"""The select stage's two-stage K-center over candidate files, against single-stage, side by side on one machine.

    python -m bench.bench_two_stage           # k = 100,000 over 150,000 x 128, init 10,000, 2 shards
    python -m bench.bench_two_stage --small   # k = 10,000 over 15,000 x 128, init 1,000

Both read the same synthetic candidate files, written as the select stage's candidates pass writes them
(``CANDIDATE_SCHEMA`` plus a float16 ``embedding`` column, one file per pass task):

- two-stage: :func:`mak_ray.select.finish.two_stage`, the path of ``select.kcenter_shards > 1``: spatial
  shard actors read the candidate files themselves and keep their own rows; the caller (here the bench's
  driver) sees only centroids, pick indices and the chosen rows;
- single-stage: what the finish task does otherwise: read every candidate, then one exact greedy.

The files are written by a child process, so the driver holds no candidate before the two-stage run. Prints,
for both: wall time and the exact covering radius of all candidates by init + picks; then the wall-time
ratio (goal: two-stage at most 1/1.3 of single-stage), the radius ratio (goal <= 1.10), the bound two-stage
reports (which must cover the exact radius), the shard sizes, budgets and rounds, the shard greedy runs' wall
and CPU seconds against the single-stage CPU seconds (on a shared machine the wall-time ratio moves with the
load; the CPU ratio shows what it approaches with a free core per shard), and the driver's peak
resident-set growth during two-stage (goal < 100 MB), after a tiny warm-up run that loads the libraries the
stage uses (its growth is printed too). Data as in bench_kcenter (clustered synthetic
embeddings).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import RssSampler, current_rss, load1
from bench.bench_kcenter import make_embeddings
from mak_ray import storage
from mak_ray.kcenter import greedy_k_center
from mak_ray.kcenter._backend import Ops
from mak_ray.kcenter.greedy import prepare_points, to_radius
from mak_ray.kcenter.nearest import nearest_init
from mak_ray.select.cut import Cut
from mak_ray.select.finish import FinishSpec, embeddings_matrix, load_candidates, two_stage
from mak_ray.select.passes import CANDIDATE_SCHEMA

WARM_N = 2000  # candidates of the warm-up run
PART_ROWS = 1000  # rows per score part file, which the candidates' (file, row) refer to
GOAL_WALL, GOAL_RADIUS, GOAL_RSS_MB = 1 / 1.3, 1.10, 100


def candidate_table(x: np.ndarray, first: int, seed: int) -> pa.Table:
    """Candidate rows ``first ..`` with embeddings ``x``, in the candidates pass's schema."""
    n = len(x)
    rng = np.random.default_rng([seed, first])
    idx = first + np.arange(n)
    ecle, prox = rng.normal(size=n).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)
    table = pa.table(
        {
            "key": pa.array(0.5 * ecle - 0.5 * prox, pa.float64()),
            "file": pa.array(idx // PART_ROWS, pa.int64()),
            "row": pa.array(idx % PART_ROWS, pa.int64()),
            "id": pa.array([f"img-{i:09d}" for i in idx], pa.string()),
            "ecle": pa.array(ecle),
            "proximity": pa.array(prox),
            "nn_distance": pa.nulls(n, pa.float32()),
            "label": pa.array(["pool"] * n, pa.string()),
        },
        schema=CANDIDATE_SCHEMA,
    )
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), x.shape[1])
    return table.append_column("embedding", emb)


def write_candidate_files(root: str, x: np.ndarray, files: int, seed: int = 0) -> list[str]:
    """``x`` as ``files`` candidate files under ``root`` (consecutive rows each); returns their paths."""
    uris = []
    for j, rows in enumerate(np.array_split(np.arange(len(x)), files)):
        uri = str(Path(root) / f"candidates-{j:05d}.parquet")
        storage.write_parquet(candidate_table(x[rows], int(rows[0]) if len(rows) else 0, seed), uri)
        uris.append(uri)
    return uris


def positions(table: pa.Table) -> np.ndarray:
    """Each chosen row's index in the generated candidate array (from its part file and row)."""
    return table.column("file").to_numpy() * PART_ROWS + table.column("row").to_numpy()


def _write(root: str, n: int, files: int) -> list[str]:
    return write_candidate_files(root, make_embeddings(n, 128, seed=0), files)


def spec_over_files(n: int, k: int, shards: int) -> FinishSpec:
    """The finish step's spec for two-stage K-center over every row of the candidate files."""
    return FinishSpec(
        method="mak",
        k=k,
        n_candidates=n,
        cut=Cut(min_key=-math.inf),
        stats={},
        loss_weight=0.5,
        target_root="",
        device="cpu",
        shards=shards,
        seed=0,
    )


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
    ap.add_argument("--files", type=int, default=8, help="candidate files (one per candidates-pass task)")
    args = ap.parse_args()
    n, m, k = (15_000, 1_000, 10_000) if args.small else (args.n, args.init, args.k)

    import ray

    with tempfile.TemporaryDirectory(prefix="bench-two-stage-") as root:
        warm_root = str(Path(root) / "warm")
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # the driver never holds the candidates
            uris = pool.apply(_write, (root, n, args.files))
            warm_uris = pool.apply(_write, (warm_root, WARM_N, 2))
        target = make_embeddings(m, 128, seed=1, cluster_ids=np.arange(0, 100, 2))
        spec = spec_over_files(n, k, args.shards)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ray.get(ray.remote(lambda: 0).remote())  # warm a worker so start-up is not billed to two-stage
            # a tiny run first loads the stage's libraries (Parquet reader, faiss, actor classes) in the driver
            warm_before = current_rss()
            two_stage(spec_over_files(WARM_N, WARM_N // 10, args.shards), warm_uris, target)
            warm_growth = (current_rss() - warm_before) / 1e6
            print(
                f"two-stage K-center over candidate files: k={k:,} over N={n:,} x 128 (float16 in "
                f"{args.files} files), init={m:,}, {args.shards} spatial shard actors (2 CPUs)   "
                f"load avg {load1()}"
            )
            before = current_rss()
            t0 = time.perf_counter()
            with RssSampler(every_s=0.02) as rss:
                chosen, radii, info = two_stage(spec, uris, target)
            t_two = time.perf_counter() - t0
        finally:
            ray.shutdown()
        load_mid = load1()
        t0, c0 = time.perf_counter(), time.process_time()
        cand = load_candidates(uris, spec.cut)
        emb = embeddings_matrix(cand.column("embedding"))
        single, _ = greedy_k_center(emb, k, target)
        t_single, cpu_single = time.perf_counter() - t0, time.process_time() - c0
    x = np.empty_like(emb)
    x[positions(cand)] = emb  # the candidates in generated order, as the files decode them
    r_single = full_radius(x, np.vstack([target, emb[single]]))
    r_two = full_radius(x, np.vstack([target, x[positions(chosen)]]))
    growth = (rss.peak - before) / 1e6
    print(f"  single-stage (read all, greedy): {t_single:8.2f} s   full-set radius (1-cos) {r_single:.5f}")
    print(f"  two-stage over the files:        {t_two:8.2f} s   full-set radius (1-cos) {r_two:.5f}")
    print(
        f"  shards {info['shard_sizes']}, budgets {info['per_shard_k']}, union {info['union_size']:,}, "
        f"rounds {info['rounds']}, chosen rows {chosen.num_rows:,} (columns: {', '.join(chosen.column_names)})"
    )
    print(
        f"  shard greedy runs: wall {info['shard_seconds']} s, CPU {info['shard_cpu_seconds']} s; single-stage "
        f"CPU {cpu_single:.1f} s: the slowest shard's CPU / single-stage CPU "
        f"{max(info['shard_cpu_seconds']) / cpu_single:.3f} (what the wall-time ratio approaches with a free "
        "core per shard)"
    )
    print(f"  reported bound {radii[-1]:.5f} >= exact {r_two:.5f}: {r_two <= radii[-1] + 1e-6}")
    print(f"  wall-time ratio two-stage / single: {t_two / t_single:.3f}   (goal <= {GOAL_WALL:.3f})")
    print(f"  radius ratio two-stage / single:    {r_two / r_single:.4f}   (goal <= {GOAL_RADIUS:.2f})")
    print(
        f"  driver peak RSS growth during two-stage: {growth:.1f} MB (goal < {GOAL_RSS_MB} MB; the warm-up run "
        f"over {WARM_N:,} candidates before it, which loads the libraries, grew it {warm_growth:.1f} MB)"
    )
    print(f"  load avg after two-stage {load_mid}, after single-stage {load1()}")
    met = t_two / t_single <= GOAL_WALL and r_two / r_single <= GOAL_RADIUS and growth < GOAL_RSS_MB
    print(f"  goals met: {met}")


if __name__ == "__main__":
    main()
