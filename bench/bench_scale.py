"""The data plane at scale: what the driver holds, how fast planning lists, what retraining reads, and what a
rescoring after growth costs; each figure measured side by side in one run.

1. **Driver memory** (``--sizes``, default 10^5 and 10^6 objects): a cheap local pool (1,000 files per
   folder; 1 % tiny PNGs, the rest empty files, which fail as ``empty``) through the score stage and the select
   stage on a tiny model; the driver's resident-set growth during each stage (sampled), and the bytes per pool
   object between the two sizes (goal: 16 or less).
2. **Planning** at the largest size: :func:`mak_ray.data.plan_input` (parallel listing tasks writing the
   manifest) against one plain single-threaded listing of the same input (``os.scandir`` with a stat per file,
   and pyarrow's recursive listing), locally; and on the moto S3 server at ``--moto-size`` objects (1,000 keys
   per folder, seeded in the server's store), against one plain ``list_objects_v2`` walk.
3. **Retraining's data step** for K = ``--budget`` selected objects from each pool size: seconds and bytes
   read (they must not grow with the pool).
4. **Rescoring after growth** (issue 19): a pool of ``--growth-pool`` real images scored in full, then grown
   by 1 % in a new sub-folder and rescored, shrunk back and rescored, and grown by 1 % spread among the
   existing names and rescored, each against the one full scoring. Ray's start-up (``ray.init``) and the
   scoring actors' start are printed apart.

    python -m bench.bench_scale                      # 10^5 and 10^6 objects, moto 10^5, growth 20,000
    python -m bench.bench_scale --small              # 10^4 and 10^5, moto 10^4, growth 2,000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from bench import RssSampler, current_rss, load1

USABLE_EVERY = 100  # one tiny PNG per this many objects
FILES_PER_FOLDER = 1000


def _png(rng: np.random.Generator, size: int) -> bytes:
    from tests.samples import good_image_bytes

    return good_image_bytes(rng, "PNG", size)


def make_cheap_pool(root: str, n: int, seed: int = 0) -> None:
    """``n`` objects in folders of 1,000: every ``USABLE_EVERY``-th a tiny PNG, the others empty files."""
    flag = os.path.join(root, ".complete")
    if os.path.exists(flag):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    pngs = [_png(rng, 8) for _ in range(64)]
    for i in range(n):
        d = os.path.join(root, f"d{i // FILES_PER_FOLDER:05d}")
        if i % FILES_PER_FOLDER == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:08d}.png"), "wb") as f:
            if i % USABLE_EVERY == 0:
                f.write(pngs[i % len(pngs)])
    open(flag, "w").close()


def make_image_pool(root: str, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(_png(rng, 16))


def tiny_model(path: str) -> None:
    import torch

    from mak_ray.config import ModelSection
    from mak_ray.models import build_model, save_model

    torch.manual_seed(0)
    mcfg = ModelSection(arch="resnet18", width=8, small_stem=True, proj_dim=16)
    save_model(build_model(mcfg), mcfg, path)


def run_cfg(pool: str, run: str, image_size: int, budget: int):
    from mak_ray.config import config_from_dict

    return config_from_dict(
        {
            "run": {"output_uri": run, "seed": 0},
            "data": {"pool": pool, "image_size": image_size},
            "model": {"width": 8, "proj_dim": 16},
            "score": {
                "views": 2,
                "bank_size": 16,
                "ecle_batch_size": 8,
                "ecle_repeats": 1,
                "centroids": 4,
                "batch_size": 64,
                "log_every_s": 3600,
            },
            "select": {"budget": budget, "methods": ["mak", "random"]},
        }
    )


def prepare_run(cfg, model_src: str, dim: int = 64, targets: int = 200) -> None:
    """The outputs the score and select stages read: the model, the target embeddings and centroids."""
    import pyarrow as pa

    from mak_ray import storage
    from mak_ray.layout import RunLayout, mark_done

    layout = RunLayout(cfg.run.output_uri)
    storage.write_bytes(layout.pretrain.model, storage.read_bytes(model_src))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((targets, dim)).astype(np.float32)
    t = pa.table(
        {
            "id": pa.array([f"t{i}" for i in range(targets)], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), dim),
            "label": pa.array(["c"] * targets, pa.string()),
            "error": pa.array([None] * targets, pa.string()),
        }
    )
    storage.write_parquet(t, layout.target_embeddings.part("t", "part-0.parquet"))
    c = emb[:4] / np.linalg.norm(emb[:4], axis=1, keepdims=True)
    storage.write_npy(layout.centroids, c)
    mark_done(layout.stage_dir("embed_target"), {"target_images": targets})


def stage_rss(fn) -> tuple[float, int, object]:
    """Seconds, resident-set growth (peak during ``fn`` minus before) and the result of ``fn()``."""
    import gc

    gc.collect()
    before = current_rss()
    t0 = time.perf_counter()
    with RssSampler(0.05) as rss:
        result = fn()
    return time.perf_counter() - t0, max(0, rss.peak - before), result


# ------------------------------------------------------------------------------------------- planning


def plain_scandir(root: str) -> int:
    n, stack = 0, [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    e.stat(follow_symlinks=False)
                    n += 1
    return n


def plain_pyarrow(root: str) -> int:
    import pyarrow.fs as pafs

    infos = pafs.LocalFileSystem().get_file_info(pafs.FileSelector(root, recursive=True))
    return sum(1 for i in infos if i.type == pafs.FileType.File)


def plain_s3(bucket: str, prefix: str) -> int:
    from mak_ray import storage

    client = storage.s3_client()
    n, token = 0, None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if token:
            kw["ContinuationToken"] = token
        resp = client.list_objects_v2(**kw)
        n += len(resp.get("Contents", []))
        if not resp.get("IsTruncated"):
            return n
        token = resp["NextContinuationToken"]


def seed_moto(bucket: str, n: int) -> None:
    """``n`` empty objects in folders of 1,000, put into the moto server's store directly (creating them
    over HTTP one PUT at a time would take most of the run); every LIST goes over HTTP."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(n):
        backend.put_object(bucket, f"pool/d{i // FILES_PER_FOLDER:05d}/{i:08d}.png", b"")


def moto_server():
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
    )
    return server


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--sizes", type=int, nargs=2, default=None)
    ap.add_argument("--moto-size", type=int, default=None)
    ap.add_argument("--growth-pool", type=int, default=None)
    ap.add_argument("--budget", type=int, default=1000, help="K of the retraining data step")
    ap.add_argument("--data", default="bench-out/scale-data", help="where the cheap pools are kept")
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["memory", "planning", "moto", "retrain", "growth"]
    )
    args = ap.parse_args()
    sizes = args.sizes or ([10_000, 100_000] if args.small else [100_000, 1_000_000])
    moto_n = args.moto_size or (10_000 if args.small else 100_000)
    growth_n = args.growth_pool or (2_000 if args.small else 20_000)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    server = moto_server() if "moto" not in args.skip else None  # before Ray, so its workers reach it

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"machine: {os.cpu_count()} CPUs, load {load1()}; ray.init {ray_start:.1f} s")
    work = tempfile.mkdtemp(prefix="bench-scale-")
    model = os.path.join(work, "model.pt")
    tiny_model(model)
    try:
        pools = {n: os.path.abspath(os.path.join(args.data, f"pool{n}")) for n in sizes}
        for n, p in pools.items():
            t = time.perf_counter()
            make_cheap_pool(p, n)
            print(f"pool of {n} objects ready in {time.perf_counter() - t:.0f} s: {p}", flush=True)
        runs = {n: os.path.join(work, f"run{n}") for n in sizes}
        if "memory" not in args.skip:
            memory(pools, runs, model)
        if "planning" not in args.skip:
            planning(pools[sizes[-1]], work)
        if server is not None:
            planning_moto(moto_n, work)
        if "retrain" not in args.skip:
            retrain_step(pools, runs, model, args.budget)
        if "growth" not in args.skip:
            growth(growth_n, work, model, ray_start)
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def memory(pools: dict[int, str], runs: dict[int, str], model: str) -> None:
    from mak_ray.layout import RunLayout
    from mak_ray.stages import score as score_stage
    from mak_ray.stages import select as select_stage

    # a warm-up run on a small pool first: the first run of each stage imports and caches what it needs
    warm = os.path.join(os.path.dirname(runs[min(runs)]), "warm")
    make_cheap_pool(warm + "-pool", 2000)
    cfg = run_cfg(warm + "-pool", warm, 8, 4)
    prepare_run(cfg, model)
    score_stage.run(cfg, RunLayout(warm))
    select_stage.run(cfg, RunLayout(warm))
    print("\n1. driver memory: score and select stages (cheap pool, tiny model, 8 px, 1 % decodable)")
    print(
        f"{'objects':>9} {'score s':>8} {'score +MiB':>10} {'select s':>8} {'select +MiB':>11} {'scored':>7}  load"
    )
    growth_by: dict[int, tuple[int, int]] = {}
    k = max(1, min(100, min(pools) // USABLE_EVERY // 4))  # fewer than the smaller pool's usable images
    for n, pool in pools.items():
        cfg = run_cfg(pool, runs[n], 8, k)
        prepare_run(cfg, model)
        layout = RunLayout(cfg.run.output_uri)
        s_sec, s_grow, summary = stage_rss(lambda: score_stage.run(cfg, layout))  # noqa: B023
        t_sec, t_grow, _ = stage_rss(lambda: select_stage.run(cfg, layout))  # noqa: B023
        growth_by[n] = (s_grow, t_grow)
        print(
            f"{n:>9} {s_sec:>8.1f} {s_grow / 2**20:>10.1f} {t_sec:>8.1f} {t_grow / 2**20:>11.1f} "
            f"{summary['scored']:>7}  {load1()}",
            flush=True,
        )
    (a, b) = sorted(growth_by)
    for k, what in ((0, "score"), (1, "select")):
        per = (growth_by[b][k] - growth_by[a][k]) / (b - a)
        print(f"{what}: driver growth between {a} and {b} objects: {per:.2f} B per object (goal <= 16)")


def planning(pool: str, work: str) -> None:
    from mak_ray.config import DataSection
    from mak_ray.data import plan_input

    print(f"\n2a. planning {pool} on local disk")
    t = time.perf_counter()
    n_scan = plain_scandir(pool)
    scan_s = time.perf_counter() - t
    t = time.perf_counter()
    n_pa = plain_pyarrow(pool)
    pa_s = time.perf_counter() - t
    t = time.perf_counter()
    plan = plan_input(pool, DataSection(), os.path.join(work, "plan-local"))
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    again = plan_input(pool, DataSection(), os.path.join(work, "plan-local"))
    again_s = time.perf_counter() - t
    assert plan.objects == n_scan - 1 == n_pa - 1 and again.reused  # the pool's ".complete" flag is skipped
    print(f"  plain os.scandir + stat, one thread: {n_scan} files in {scan_s:.1f} s")
    print(f"  plain pyarrow recursive listing:     {n_pa} files in {pa_s:.1f} s")
    print(
        f"  plan_input (parallel tasks, manifest of {len(plan.parts)} parts, {plan.shards} shards): "
        f"{plan_s:.1f} s; ratio to scandir {plan_s / scan_s:.2f}, to pyarrow {plan_s / pa_s:.2f}; "
        f"rerun (unchanged, reused) {again_s:.1f} s"
    )


def planning_moto(n: int, work: str) -> None:
    import boto3

    from mak_ray.config import DataSection
    from mak_ray.data import plan_input

    bucket = "bench-scale"
    boto3.client("s3").create_bucket(Bucket=bucket)
    t = time.perf_counter()
    seed_moto(bucket, n)
    print(
        f"\n2b. planning s3://{bucket}/pool on the moto server: {n} keys seeded in {time.perf_counter() - t:.0f} s"
    )
    t = time.perf_counter()
    n_plain = plain_s3(bucket, "pool/")
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    plan = plan_input(f"s3://{bucket}/pool", DataSection(), os.path.join(work, "plan-s3"))
    plan_s = time.perf_counter() - t
    assert plan.objects == n_plain == n
    print(f"  plain list_objects_v2 walk, one thread: {n_plain} keys in {plain_s:.1f} s")
    print(f"  plan_input (parallel tasks): {plan_s:.1f} s; ratio {plan_s / plain_s:.2f}")


def retrain_step(pools: dict[int, str], runs: dict[int, str], model: str, k: int) -> None:
    import pyarrow as pa

    from mak_ray import storage
    from mak_ray.data import read_plan
    from mak_ray.data.sampling import permuted
    from mak_ray.layout import RunLayout
    from mak_ray.train.dataset import fetch_selection

    print(f"\n3. retraining's data step: K = {k} selected objects fetched by id")
    print(f"{'pool':>9} {'seconds':>8} {'bytes read':>11} {'objects':>8} {'usable':>7}")
    for n, pool in pools.items():
        cfg = run_cfg(pool, runs[n], 8, 100)
        layout = RunLayout(cfg.run.output_uri)
        plan = read_plan(layout.plan("pool"))
        usable = n // USABLE_EVERY
        picks = np.sort(permuted(1, usable, 0, k)) * USABLE_EVERY  # the decodable objects
        ids = [
            f"{pool}/d{i // FILES_PER_FOLDER:05d}/{i:08d}.png" for i in picks.tolist()
        ]  # plain names: their ids are their paths
        sel = layout.selection("random")
        storage.write_parquet(pa.table({"id": ids, "order": np.arange(len(ids))}), sel.parquet)
        out = os.path.join(runs[n], "fetch")
        t = time.perf_counter()
        info = fetch_selection(cfg, sel, plan, layout.scores, out)
        sec = time.perf_counter() - t
        print(
            f"{n:>9} {sec:>8.2f} {info['bytes_read']:>11} {info['rows']:>8} {info['usable']:>7}", flush=True
        )


def growth(n: int, work: str, model: str, ray_start: float) -> None:
    from mak_ray.layout import RunLayout
    from mak_ray.stages import score as score_stage

    print(f"\n4. rescoring after 1 % growth of a {n}-image pool (16 px, tiny model, 20 folders)")
    print(f"   ray.init took {ray_start:.1f} s (not in any figure below)")
    print(
        "   scoring = the engine (plan, carry-over, read, score, write, markers); stage = scoring plus the\n"
        "   pool-wide diagnostics, which read every row again; actor start = from the actor pool's launch until\n"
        "   its first actor had its model; prep / carry / read+score / finish = the engine's phases (read+score\n"
        "   includes the actor start); w/o start = (scoring - actor start) against the same for the full run"
    )
    names = [f"c{i % 20:02d}/img{2 * i:07d}.png" for i in range(n)]
    pool = os.path.join(work, "grow-pool")
    make_image_pool(pool, names, 0)
    cfg = run_cfg(pool, os.path.join(work, "grow-run"), 16, 100)
    prepare_run(cfg, model)
    layout = RunLayout(cfg.run.output_uri)
    header = (
        f"{'case':>22} {'stage s':>8} {'scoring s':>9} {'actor start':>11} {'scored':>7} {'carried':>7} "
        f"{'shards +/-/=':>14} {'prep':>5} {'carry':>5} {'read+score':>10} {'finish':>6} {'of full':>8} "
        f"{'w/o start':>9}  load"
    )
    print(header)
    full: dict = {}

    def run(case: str) -> None:
        t = time.perf_counter()
        s = score_stage.run(cfg, layout)
        stage_s = time.perf_counter() - t
        ph = s["phase_seconds"]
        start = ph.get("actor_start", 0.0)
        if not full:
            full.update(s, stage_s=stage_s)
        full_start = full["phase_seconds"].get("actor_start", 0.0)
        share = s["seconds"] / full["seconds"]
        steady = (s["seconds"] - start) / max(full["seconds"] - full_start, 1e-9)
        shards = f"{s['shards_added']}/{s['shards_removed']}/{s['shards_reused']}"
        print(
            f"{case:>22} {stage_s:>8.1f} {s['seconds']:>9.1f} {start:>11.1f} {s['rows_this_run']:>7} "
            f"{s['rows_carried']:>7} {shards:>14} {ph['prepare']:>5.1f} {ph['carry']:>5.1f} "
            f"{ph['read_score']:>10.1f} {ph['finish']:>6.1f} {share:>8.3f} {steady:>9.3f}  {load1()}",
            flush=True,
        )

    run("full")
    extra = n // 100
    folder = [f"new/img{i:07d}.png" for i in range(extra)]
    make_image_pool(pool, folder, 1)
    run("+1 % new sub-folder")
    shutil.rmtree(os.path.join(pool, "new"))
    run("-1 % (folder removed)")
    spread = [f"c{i % 20:02d}/img{2 * i * (n // extra) + 1:07d}.png" for i in range(extra)]
    make_image_pool(pool, spread, 2)
    run("+1 % spread among names")
    shutil.rmtree(pool, ignore_errors=True)


if __name__ == "__main__":
    main()
