"""Scoring throughput: the Ray Data pipeline against a hand-written single-process loop, side by side.

Both paths use the same model file, images, seeded augmentations, negative bank, ECLE and proximity code;
the hand loop reads, decodes and scores files in order in this process (torch on every core) and writes
nothing, the pipeline reads, decodes, scores on an actor pool and writes Parquet with markers. The ratio
pipeline/hand is the pipeline's efficiency (goal >= 0.9). Memory: the driver's peak resident set during
the pipeline (sampled), its growth during the pipeline (``driver +MiB``: the peak also carries what this
process did before, such as writing the next pool and the previous hand loop), and the actors' peak (their
own getrusage) at N and 4N images must stay flat.

The hand loop runs just before and just after the pipeline, and ``hand/s`` counts both runs (images over
time): on a shared machine the speed drifts within minutes, and a single loop on one side of the pipeline turns
such drift into the ratio. Both runs are printed.

Two pipeline rates are printed:
- ``e2e``: all images over the whole ``score_pool`` call, startup included.
- ``steady``: all images over the time after ``startup`` (from the call until the first scoring actor has
  its model loaded: new worker processes, importing torch/torchvision, loading the model).
The goal is on images/s, so the e2e ratio is the one that counts; the steady ratio shows the per-image
efficiency once the actors are up. Startup is a fixed cost per job that the hand loop does not pay in its
timing (torch is already imported in this process), so the e2e ratio approaches the steady one as N grows.

Two models (``--model``):
- ``default``: the model and scoring settings a config gets by default (ResNet-18 width 64, 128-d projection,
  R=10 views, ECLE over 10 batchings of 512 negatives), at 32 px: the work a user's job does per image.
- ``tiny`` (the default of this script, for quick runs): width 16, 64-d projection, R=4, ECLE 2 x 128. Its
  images cost far less, so the fixed startup weighs far more at small N.

The negative bank holds 512 samples in both (``score.bank_size`` changes no per-image work, only the untimed
bank build).

    python -m bench.bench_score                 # tiny, 200 and 800 images
    python -m bench.bench_score --full          # tiny, 2,000 and 8,000 images
    python -m bench.bench_score --full --model default   # 2,000 and 8,000 images on the default model
    python -m bench.bench_score --sizes 500 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np

from bench import RssSampler, current_rss


def make_pool(root: str, n: int, size: int, seed: int = 0) -> None:
    from tests.samples import good_image_bytes

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = os.path.join(root, f"c{i % 10}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:06d}.png"), "wb") as f:
            f.write(good_image_bytes(rng, "PNG", size))


def hand_loop(cfg, model_uri: str, bank: np.ndarray, centroids: np.ndarray, files: list[str]) -> float:
    """The same work without Ray: returns images/s."""
    import torch

    from mak_ray.augment import clean_batch, seeded_views
    from mak_ray.data.decode import decode_image
    from mak_ray.data.readers import read_object
    from mak_ray.mak import ecle, proximity
    from mak_ray.models import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    sc, size = cfg.score, cfg.data.image_size
    t0 = time.perf_counter()
    model = load_model(model_uri)
    ecle_bs = min(sc.ecle_batch_size, bank.shape[1] + 1)
    for s in range(0, len(files), sc.batch_size):
        chunk = files[s : s + sc.batch_size]
        imgs = np.stack([decode_image(read_object(f), size, cfg.data.max_pixels)[0] for f in chunk])
        with torch.inference_mode():
            v = seeded_views(imgs, chunk, sc.views, cfg.run.seed, size)
            r, b = v.shape[:2]
            z = model(v.reshape(r * b, *v.shape[2:])).reshape(r, b, -1).numpy()
            emb = model.embed(clean_batch(imgs, size)).numpy()
        ecle(
            z,
            bank,
            temperature=sc.temperature,
            batch_size=ecle_bs,
            repeats=sc.ecle_repeats,
            seed=cfg.run.seed,
            keys=chunk,
        )
        proximity(emb, centroids)
    return len(files) / (time.perf_counter() - t0)


def _tiny() -> dict:
    return {"width": 16, "proj_dim": 64, "views": 4, "ecle_batch_size": 128, "ecle_repeats": 2}


def _default() -> dict:
    """The defaults of ``ModelSection`` and ``ScoreSection``, read from the dataclasses."""
    from mak_ray.config import ModelSection, ScoreSection

    m, sc = ModelSection(), ScoreSection()
    return {
        "width": m.width,
        "proj_dim": m.proj_dim,
        "views": sc.views,
        "ecle_batch_size": sc.ecle_batch_size,
        "ecle_repeats": sc.ecle_repeats,
    }


PRESETS = {"tiny": _tiny, "default": _default}
BANK_SIZE = 512  # both models; score.bank_size changes no per-image work, only the untimed bank build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 800])
    ap.add_argument("--full", action="store_true", help="the issue's sizes: 2,000 and 8,000 images")
    ap.add_argument(
        "--model",
        choices=sorted(PRESETS),
        default="tiny",
        help="tiny: a light model, fast to run; default: the model and scoring settings a config gets by default",
    )
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--width", type=int, help="ResNet-18 first-stage width (overrides the preset)")
    ap.add_argument("--views", type=int, help="augmented views R (overrides the preset)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--files-per-shard",
        type=int,
        help="the same for every size of a run, so a 4x pool is 4x the shards, as when a user's pool grows "
        "(default: the smallest size / 8, at least 25; 250 with --full)",
    )
    args = ap.parse_args()
    if args.full:
        args.sizes = [2000, 8000]
    args.files_per_shard = args.files_per_shard or max(25, min(args.sizes) // 8)
    preset = PRESETS[args.model]()
    preset["width"] = args.width or preset["width"]
    preset["views"] = args.views or preset["views"]
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    import torch

    from mak_ray import storage
    from mak_ray.config import ModelSection, config_from_dict
    from mak_ray.data.manifest import plan_for
    from mak_ray.layout import ShardedOutput
    from mak_ray.models import build_model, save_model
    from mak_ray.score import score_pool
    from mak_ray.score.bank import load_or_compute_bank

    tmp = tempfile.mkdtemp(prefix="bench-score-")
    torch.manual_seed(0)
    mcfg = ModelSection(arch="resnet18", width=preset["width"], small_stem=True, proj_dim=preset["proj_dim"])
    model = build_model(mcfg)
    model_uri = os.path.join(tmp, "model.pt")
    save_model(model, mcfg, model_uri)
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(10, model.feature_dim)).astype(np.float32)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="rb-", dir="/tmp"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False

    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; model {args.model}: resnet18 "
        f"width {preset['width']}, projection {preset['proj_dim']}, {args.image_size}px, {preset['views']} views, "
        f"ECLE {preset['ecle_repeats']} x {preset['ecle_batch_size']} negatives (bank {BANK_SIZE}); {args.actors} actors, "
        f"batch {args.batch_size}, {args.files_per_shard} files per shard"
    )
    print(
        f"{'images':>7} {'e2e/s':>7} {'startup s':>9} {'steady/s':>8} {'hand bef|aft/s':>15} {'hand/s':>7} {'ratio e2e':>9} "
        f"{'ratio steady':>12} {'driver peak MiB':>15} {'driver +MiB':>11} {'actor peak MiB':>14}"
    )
    for n in args.sizes:
        pool = os.path.join(tmp, f"pool{n}")
        make_pool(pool, n, args.image_size)
        out = os.path.join(tmp, f"out{n}")
        cfg = config_from_dict(
            {
                "run": {"output_uri": out, "seed": 0},
                "data": {
                    "pool": pool,
                    "image_size": args.image_size,
                    "files_per_shard": args.files_per_shard,
                },
                "score": {
                    "views": preset["views"],
                    "bank_size": BANK_SIZE,
                    "ecle_batch_size": preset["ecle_batch_size"],
                    "ecle_repeats": preset["ecle_repeats"],
                    "batch_size": args.batch_size,
                    "num_actors": args.actors,
                    "min_actors": args.actors,
                    "cpus_per_actor": 0.5,
                    "log_every_s": 3600,
                },
            }
        )
        sharded = ShardedOutput(out)
        plan = plan_for(cfg, pool)
        bank_uri = sharded.file("bank.npy")
        bank = load_or_compute_bank(cfg, model_uri, plan, bank_uri, sharded.file("bank.json"))  # untimed
        files = [
            i for part in plan.part_uris for i in storage.read_parquet(part, ["id"]).column("id").to_pylist()
        ]
        before = hand_loop(cfg, model_uri, bank, centroids, files)
        driver_before = current_rss()  # what this process already holds (the bench's own pools, hand loop)
        with RssSampler() as rss:
            summary = score_pool(
                cfg, model_uri, centroids, sharded, sharded.file("bank.npy"), targets=centroids
            )
        assert summary["inputs"] == n == summary["scored"]
        after = hand_loop(cfg, model_uri, bank, centroids, files)
        hand = 2 / (1 / before + 1 / after)  # both loops' images over both loops' time
        pipe, steady = summary["images_per_s"], summary["steady_images_per_s"]
        print(
            f"{n:>7} {pipe:>7.1f} {summary['startup_seconds']:>9.1f} {steady:>8.1f} "
            f"{f'{before:.1f}|{after:.1f}':>15} {hand:>7.1f} "
            f"{pipe / hand:>9.2f} {steady / hand:>12.2f} {rss.peak / 2**20:>15.0f} "
            f"{(rss.peak - driver_before) / 2**20:>11.0f} "
            f"{summary['actor_max_rss_bytes'] / 2**20:>14.0f}",
            flush=True,
        )
        storage.delete(pool)
    ray.shutdown()


if __name__ == "__main__":
    main()
