"""The select stage against one plain pyarrow read of its small columns, on synthetic score outputs.

For each pool size N it writes a score output as the scorer does (1,000-row part files with URI-like ids,
ECLE, proximity and 128-d float16 embeddings; 0.5 % failed rows) and a target embedding output of 10,000
points, then measures side by side in one process:

- ``read``: one plain pyarrow read of every part file's ``id``, ``ecle`` and ``proximity`` columns, in this
  process, and ``wread``: the same read in one Ray task (Ray starts its workers at a lower priority than the
  driver, so on a machine shared with other work the stage's tasks and this read are slowed alike);
- ``stage``: the select stage (:mod:`mak_ray.stages.select`) for ``mak`` and ``random`` at budget K on a
  local Ray instance whose workers were started before (one task per CPU), with its phase seconds from the
  methods' summaries;
- the driver's resident-set growth during the stage (sampled), and its growth per pool row between the sizes.

The ratio stage/read is the goal's figure (3 or less); ``pool-dependent`` is the stage minus mak's finish task
(reading its candidates and K-center: work set by K, not by N), shown beside it.

The candidates pass decodes the embedding column of every file that holds a K-center candidate, and how fast
that is depends on how the column was written: ``--embedding-encoding`` writes it as the scorer does
(``scorer``, the default: :func:`mak_ray.score.parts.write_part`, no dictionary and uncompressed), with a
dictionary (``dictionary``: ``storage.write_parquet``'s defaults, zstd), without a dictionary (``plain``,
zstd), or without a dictionary in byte-stream-split pages (``raw``, zstd). The other columns, and the target
embedding output, are written as the scorer and the embedder write them in every case.

    python -m bench.bench_select            # N = 200,000 and 2,000,000, K = 20,000
    python -m bench.bench_select --small    # N = 20,000 and 200,000, K = 2,000
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import RssSampler, current_rss, load1

ROWS_PER_FILE = 1000
DIM = 128
TARGET = 10_000


def _emb(rng: np.random.Generator, n: int, centers: np.ndarray) -> pa.Array:
    x = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.standard_normal((n, DIM))
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), DIM)


ENCODINGS = ("scorer", "dictionary", "plain", "raw")


def _write_part(table: pa.Table, uri: str, encoding: str) -> None:
    from mak_ray import storage
    from mak_ray.score.parts import write_part

    if encoding == "scorer":
        write_part(table, uri)
        return
    if encoding == "dictionary":
        storage.write_parquet(table, uri)
        return
    buf = io.BytesIO()
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    extra = (
        {"column_encoding": {"embedding.list.element": "BYTE_STREAM_SPLIT"}} if encoding != "plain" else {}
    )
    pq.write_table(table, buf, compression="zstd", use_dictionary=strings, **extra)
    storage.write_bytes(uri, buf.getvalue())


def write_run(root: str, n: int, seed: int = 0, encoding: str = "scorer") -> None:
    """A score output of ``n`` rows and a target embedding output under the run folder ``root``."""
    from mak_ray.layout import RunLayout

    layout = RunLayout(root)
    done_flag = os.path.join(root, "bench-data-complete")
    if os.path.exists(done_flag):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, DIM))
    for f, start in enumerate(range(0, n, ROWS_PER_FILE)):
        m = min(ROWS_PER_FILE, n - start)
        failed = rng.random(m) < 0.005
        ecle = rng.normal(5.0, 1.0, m).astype(np.float32)
        prox = rng.gamma(2.0, 0.05, m).astype(np.float32)
        table = pa.table(
            {
                "id": pa.array([f"s3://bucket/pool/{start + i:09d}.jpg" for i in range(m)], pa.string()),
                "ecle": pa.array(ecle, mask=failed),
                "proximity": pa.array(prox, mask=failed),
                "embedding": _emb(rng, m, centers),
                "label": pa.array(["c"] * m, pa.string()),
                "error": pa.array([("corrupt" if x else None) for x in failed], pa.string()),
                "shard": pa.array([f"{f:06d}"] * m, pa.string()),
            }
        )
        _write_part(table, layout.scores.part(f"{f:06d}", "part-000000000.parquet"), encoding)
    target = pa.table(
        {
            "id": pa.array([f"t{i}" for i in range(TARGET)], pa.string()),
            "embedding": _emb(rng, TARGET, centers),
            "label": pa.array(["c"] * TARGET, pa.string()),
            "error": pa.array([None] * TARGET, pa.string()),
        }
    )
    _write_part(target, layout.target_embeddings.part("t", "part-0.parquet"), "scorer")
    open(done_flag, "w").close()


def _ratios(t: float, reads: tuple[float, float]) -> str:
    return "/".join(f"{t / r:.2f}" for r in reads)


def _warm() -> None:
    """Start a Ray worker with the select stage's modules imported, as earlier stages of a run leave them."""
    import mak_ray.select.passes  # noqa: F401


def plain_read(files: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = 0
    for f in files:
        rows += pq.read_table(f, columns=["id", "ecle", "proximity"]).num_rows
    return time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="N = 20,000 and 200,000, K = 2,000")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--data", default="bench-out/select-data", help="where the synthetic runs are kept")
    ap.add_argument(
        "--embedding-encoding",
        choices=ENCODINGS,
        default="scorer",
        help="how the embedding column is written",
    )
    args = ap.parse_args()
    sizes = args.sizes or ([20_000, 200_000] if args.small else [200_000, 2_000_000])
    k = args.budget or (2_000 if args.small else 20_000)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from mak_ray.config import load_config
    from mak_ray.layout import RunLayout
    from mak_ray.score import part_files
    from mak_ray.stages.select import run

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.get([ray.remote(_warm).remote() for _ in range(os.cpu_count())])
    print(
        f"select stage vs one plain read of id/ecle/proximity; K = {k}, methods mak + random, {DIM}-d fp16 "
        f"embeddings written with {args.embedding_encoding} encoding"
    )
    print(
        "stage: the whole stage; -kc: less mak's K-center seconds; pool-dep: less mak's whole finish task; "
        "ratios: to read / to wread"
    )
    print(
        f"{'rows':>10} {'files':>6} {'read s':>7} {'wread s':>7} {'stage s':>8} {'ratios':>11} {'-kc s':>6} "
        f"{'ratios':>11} {'pool-dep s':>10} {'ratios':>11} {'stats':>6} {'cand':>6} {'mak fin':>7} {'kc':>6} "
        f"{'rnd fin':>7} {'bounds':>13} {'driver +MiB':>11}  load"
    )
    growth = {}
    for n in sizes:
        name = f"n{n}-{args.embedding_encoding}"
        root = os.path.abspath(os.path.join(args.data, name))
        write_run(root, n, encoding=args.embedding_encoding)
        layout = RunLayout(root)
        shutil.rmtree(layout.stage_dir("select"), ignore_errors=True)
        files = part_files(layout.scores.root)
        read_s, rows = plain_read(files)
        wread_s, _ = ray.get(ray.remote(plain_read).remote(files))
        cfg = load_config(
            None, [f"run.output_uri={root}", f"select.budget={k}", "select.methods=[mak, random]"]
        )
        before = current_rss()
        t0 = time.perf_counter()
        with RssSampler() as rss:
            summary = run(cfg, layout)
        stage_s = time.perf_counter() - t0
        growth[n] = max(0, rss.peak - before)
        mak, rnd = summary["mak"], summary["random"]
        pool_dep = stage_s - mak["seconds_finish"]
        no_kc = stage_s - mak["seconds_kcenter"]
        bounds = f"{mak['candidate_bound']}/{rnd['candidate_bound']}"
        ratios = functools.partial(_ratios, reads=(read_s, wread_s))
        print(
            f"{rows:>10} {len(files):>6} {read_s:>7.2f} {wread_s:>7.2f} {stage_s:>8.2f} {ratios(stage_s):>11} "
            f"{no_kc:>6.2f} {ratios(no_kc):>11} {pool_dep:>10.2f} {ratios(pool_dep):>11} "
            f"{mak['seconds_stats']:>6.2f} {mak['seconds_candidates']:>6.2f} {mak['seconds_finish']:>7.2f} "
            f"{mak['seconds_kcenter']:>6.2f} {rnd['seconds_finish']:>7.2f} {bounds:>13} "
            f"{growth[n] / 2**20:>11.1f}  {load1()}",
            flush=True,
        )
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        per_row = (growth[b] - growth[a]) / (b - a)
        print(f"driver growth between {a} and {b} rows: {per_row:.2f} B per row (goal <= 16)")
    ray.shutdown()


if __name__ == "__main__":
    main()
