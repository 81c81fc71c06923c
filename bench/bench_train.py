"""Ray Train overhead for SimCLR: steps/s of ``train_simclr`` on 1 worker against a plain torch loop.

Both sides run the same step function (``mak_ray.train.loop.train_step``: two augmented views on the CPU,
forward, NT-Xent, SGD) on the same model, batch and images, with the same torch thread count; the Ray side is
the production path (Ray Data shard -> TorchTrainer worker -> checkpoint to storage). Throughput is taken
from the fastest whole epoch after the first (the first includes start-up; other load on a shared machine
only adds time), so per-epoch costs such as Ray Data's streaming-split start are counted; medians are
printed too. A 2-worker run at the same global batch gives
the scaling figure (on a 2-core machine that also runs Ray Data, expect well under 2x).

    python -m bench.bench_train                     # CPU default, ~2-3 min on 2 cores
    python -m bench.bench_train --images 4096 --width 32
    python -m bench.bench_train --gpu               # resnet50, 224 px, bf16, 1 GPU worker vs plain CUDA loop

``--gpu`` needs a CUDA machine; it sets arch=resnet50, size 224, the standard stem, width 64, batch 256 and
uses ``--threads`` CPU threads (default 8) for the augmentation on both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from mak_ray.config import MakConfig, config_from_dict
from mak_ray.models import build_model
from mak_ray.train.loop import make_optimizer, train_step
from mak_ray.train.trainer import train_simclr


def _config(args: argparse.Namespace, workers: int, cpus_per_worker: float) -> MakConfig:
    return config_from_dict(
        {
            "data": {"image_size": args.size},
            "model": {"arch": args.arch, "width": args.width, "small_stem": args.size <= 64, "proj_dim": 128},
            "pretrain": {
                "epochs": args.epochs,
                "batch_size": args.batch,
                "num_workers": workers,
                "cpus_per_worker": cpus_per_worker,
                "use_gpu": args.gpu,
                "warmup_epochs": 1,
                "checkpoint_every": args.epochs,
                "max_failures": 0,
            },
        }
    )


def plain_loop(cfg: MakConfig, images: np.ndarray, threads: int) -> list[tuple[int, float]]:
    """The same training in one process without Ray: per-epoch shuffle, slice, train_step. (steps, s) per epoch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if cfg.pretrain.use_gpu else "cpu")
    model = build_model(cfg.model).to(device)
    b = cfg.pretrain.batch_size
    steps_per_epoch = len(images) // b
    optimizer, scheduler = make_optimizer(model, cfg.pretrain, b, steps_per_epoch)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(cfg.pretrain.epochs):
        model.train()
        order = rng.permutation(len(images))
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for s in range(steps_per_epoch):
            batch = images[np.sort(order[s * b : (s + 1) * b])]
            loss_sum += train_step(
                model, optimizer, scheduler, batch, cfg.data.image_size, cfg.pretrain.temperature, device
            )
        float(loss_sum)  # sync the device before stopping the clock
        out.append((steps_per_epoch, time.perf_counter() - t0))
    return out


def ray_run(cfg: MakConfig, images: np.ndarray, store: str, name: str) -> list[tuple[int, float]]:
    import ray

    from mak_ray import storage
    from mak_ray.layout import TrainOutput

    ds = ray.data.from_numpy(images).rename_columns({"data": "image"})
    out = TrainOutput(os.path.join(store, name), name)
    train_simclr(cfg, cfg.pretrain, ds, out, num_rows=len(images))
    hist = storage.read_json(out.metrics)["history"]
    return [(h["steps"], h["epoch_time_s"]) for h in hist]


def steady(epochs: list[tuple[int, float]]) -> float:
    """Steps/s of the fastest epoch after the first: on a shared machine other load only ever adds time,
    so the fastest whole epoch is the best estimate of each side's own cost."""
    rest = epochs[1:] or epochs
    return max(s / t for s, t in rest)


def median_sps(epochs: list[tuple[int, float]]) -> float:
    rest = epochs[1:] or epochs
    return statistics.median(s / t for s, t in rest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides (= CPUs per worker)")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--no-scaling", action="store_true", help="skip the 2-worker run")
    args = p.parse_args()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
        args.arch, args.size, args.width = "resnet50", 224, 64
        args.batch = 256 if args.batch == 64 else args.batch
        args.images = max(args.images, 4 * args.batch)
        args.threads = 8 if args.threads == 1 else args.threads
        args.no_scaling = True

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    print(
        f"setup: {args.arch} width {args.width} at {args.size}px, global batch {args.batch}, {args.images} images, "
        f"{args.epochs} epochs, {args.threads} torch thread(s), {'GPU bf16' if args.gpu else 'CPU'}"
    )

    plain = plain_loop(_config(args, 1, args.threads), images, args.threads)
    plain_sps = steady(plain)
    print(
        f"plain torch loop      : {plain_sps:7.3f} steps/s  ({plain_sps * args.batch:8.1f} images/s)  "
        f"median {median_sps(plain):.3f}; epochs {[round(t, 2) for _, t in plain]} s"
    )

    tmp = tempfile.mkdtemp(prefix="mr-bench-", dir="/tmp")
    ray.init(include_dashboard=False, _temp_dir=tmp, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        # The same plain loop inside a Ray task with the worker's CPU share: same process environment as a Train
        # worker (Ray sets OMP_NUM_THREADS etc.), without Ray Train or Ray Data. Separates environment effects
        # from Ray Train's own overhead.
        task = ray.remote(num_cpus=float(args.threads), num_gpus=1 if args.gpu else 0)(plain_loop)
        in_task = ray.get(task.remote(_config(args, 1, args.threads), images, args.threads))
        task_sps = steady(in_task)
        print(
            f"plain loop in Ray task: {task_sps:7.3f} steps/s  ({task_sps * args.batch:8.1f} images/s)  "
            f"median {median_sps(in_task):.3f}; epochs {[round(t, 2) for _, t in in_task]} s"
        )
        t0 = time.perf_counter()
        one = ray_run(_config(args, 1, float(args.threads)), images, tmp, "one")
        wall_one = time.perf_counter() - t0
        one_sps = steady(one)
        print(
            f"Ray Train, 1 worker   : {one_sps:7.3f} steps/s  ({one_sps * args.batch:8.1f} images/s)  "
            f"median {median_sps(one):.3f}; epochs {[round(t, 2) for _, t in one]} s, fit wall {wall_one:.1f} s"
        )
        print(
            f"overhead ratio (plain steps/s / Ray steps/s) = {plain_sps / one_sps:.3f}  (goal <= 1.10); "
            f"on medians {median_sps(plain) / median_sps(one):.3f}; "
            f"against the loop in a Ray task {task_sps / one_sps:.3f} (medians "
            f"{median_sps(in_task) / median_sps(one):.3f})"
        )
        if not args.no_scaling:
            # half a CPU each so that Ray Data keeps a CPU on 2-core machines; torch threads stay at 1 per worker
            two = ray_run(_config(args, 2, max(0.5, args.threads / 2)), images, tmp, "two")
            two_sps = steady(two)
            print(
                f"Ray Train, 2 workers  : {two_sps:7.3f} steps/s  ({two_sps * args.batch:8.1f} images/s)  "
                f"median {median_sps(two):.3f}; epochs {[round(t, 2) for _, t in two]} s"
            )
            print(
                f"2-worker speed-up at the same global batch = {two_sps / one_sps:.2f}x (ideal 2.00x), "
                f"efficiency {two_sps / one_sps / 2:.0%}"
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
