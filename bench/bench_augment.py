"""Views/s of the batched SimCLR augmentation against the old per-image torchvision path, side by side.

The baseline is the implementation `mak_ray.augment.seeded_views` had before it was vectorised: one torchvision v2
SimCLR transform call per (image, view), with the global torch RNG reseeded for each. It lives only here.

    python -m bench.bench_augment                     # 32 px and 224 px, B=64, R=10
    python -m bench.bench_augment --sizes 32 96 224 --batch 64 --views 10 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mak_ray.augment import _as_chw_batch, seeded_views, simclr_transform, view_seed


def baseline_seeded_views_per_image(
    images: np.ndarray, keys: Sequence[str], views: int, seed: int, image_size: int
) -> torch.Tensor:
    """BASELINE (old implementation): torchvision v2 transforms applied image by image, view by view."""
    batch = _as_chw_batch(images)
    t = simclr_transform(image_size)
    out = torch.empty((views, batch.shape[0], 3, image_size, image_size), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        for i, (img, key) in enumerate(zip(batch, keys)):
            for r in range(views):
                torch.manual_seed(view_seed(seed, str(key), r))
                out[r, i] = t(img)
    return out


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, lazy imports)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path; the best is reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with open("/proc/loadavg") as f:
        load = f.read().strip()
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, loadavg before: {load}")
    print(f"B={args.batch} R={args.views}, best of {args.repeats}")
    print(f"{'size':>5} {'baseline views/s':>17} {'batched views/s':>16} {'speed-up':>9}")
    rng = np.random.default_rng(0)
    n_views = args.batch * args.views
    for size in args.sizes:
        images = rng.integers(0, 256, size=(args.batch, size, size, 3), dtype=np.uint8)
        keys = [f"img-{i}" for i in range(args.batch)]
        call = (images, keys, args.views, 0, size)
        old = _best_seconds(lambda call=call: baseline_seeded_views_per_image(*call), args.repeats)
        new = _best_seconds(lambda call=call: seeded_views(*call), args.repeats)
        print(f"{size:>5} {n_views / old:>17.1f} {n_views / new:>16.1f} {old / new:>8.2f}x", flush=True)
    with open("/proc/loadavg") as f:
        print(f"loadavg after: {f.read().strip()}")


if __name__ == "__main__":
    main()
