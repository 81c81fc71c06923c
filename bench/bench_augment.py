"""CPU milliseconds per image on the scoring path outside the model forward: the replaced CPU path against the
device path, side by side in one run, and the host work that remains when a GPU does the rest.

Per image of generated ~500x375 JPEGs (every fourth portrait), at ``--image-size`` with R = ``--views`` views, a
negative bank of ``--bank`` samples (511 negatives, 10 repeats), one torch thread. The model is a stand-in whose
forward returns fixed projections and embeddings, so no forward is timed:

- ``today``: square decode (``decode_image``) + the replaced CPU augmentation (``tests/reference_augment.py``) +
  numpy normalisation + the replaced CPU bank ECLE (``tests/reference_ecle.py``) + proximity;
- ``device <d>``: frame decode (``decode_frame``) + :class:`mak_ray.score.device.DeviceScorer` on ``<d>`` (cpu,
  and cuda where present or asked for), two batches in flight; on cuda the host CPU time is the figure;
- ``host share``: the part of the device path a GPU actor's host still does per image: frame decode, the copy
  into the batch canvas, the parameter draw (view seeds, Philox, crop boxes, op groups), ECLE's window offsets.

Times are this process's CPU seconds (steadier than wall time on a shared machine; wall is printed too).

    python -m bench.bench_augment                      # 224 px, R=10, 64 images in batches of 32
    python -m bench.bench_augment --images 32 --batch 16 --devices cpu cuda
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from bench import load1
from bench.images import jpeg_files
from mak_ray.augment import ImageBatch, ViewParams, centre_boxes, chunk_elements, seeded_uniforms
from mak_ray.data.decode import decode_frame, decode_image, default_decode_size
from mak_ray.mak.ecle import BankECLE, keys_to_u64
from mak_ray.mak.proximity import proximity
from mak_ray.score.device import DeviceParams, DeviceScorer

MAX_PIXELS = 50_000_000
PROJ_DIM, FEAT_DIM = 128, 2048  # ResNet-50's head and features


class StandInModel(torch.nn.Module):
    """Fixed projections and embeddings whatever the input: the scoring path minus the model forward."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("z", torch.randn(rows, PROJ_DIM, generator=g))
        self.register_buffer("e", torch.randn(rows, FEAT_DIM, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z[: x.shape[0]]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.e[: x.shape[0]]


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(process CPU s, wall s) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def today_path(
    files: Sequence[bytes],
    keys: Sequence[str],
    p: DeviceParams,
    model,
    bank: np.ndarray,
    centroids: np.ndarray,
) -> np.ndarray:
    """The replaced scorer's per-batch work, the model forward replaced by ``model``'s fixed outputs."""
    from tests import reference_augment as ref
    from tests.reference_ecle import ecle_bank

    s = p.image_size
    imgs = np.stack([decode_image(f, s, MAX_PIXELS)[0] for f in files])
    with torch.inference_mode():
        v = ref.seeded_views(imgs, list(keys), p.views, p.seed, s)
        r, b = v.shape[:2]
        z = model(v.reshape(r * b, 3, s, s)).numpy().reshape(r, b, -1)
        emb = model.embed(ref.clean_batch(imgs, s)).numpy()
    z = z / np.maximum(np.linalg.norm(z, axis=2, keepdims=True), 1e-12)
    z = z / np.linalg.norm(z, axis=-1)[..., None]  # ecle() scales its inputs again
    bn = bank / np.linalg.norm(bank, axis=-1)[..., None]
    n_neg = p.ecle_batch_size - 1
    e = ecle_bank(
        torch.from_numpy(z),
        torch.from_numpy(bn),
        keys_to_u64(keys, b),
        p.temperature,
        n_neg,
        p.ecle_repeats,
        p.seed,
    )
    proximity(emb, centroids)
    return e


def host_share(
    files: Sequence[bytes], keys: Sequence[str], p: DeviceParams, engine: BankECLE, device: torch.device
) -> dict[str, float]:
    """Process CPU seconds of each host step of the device path for one batch."""
    out: dict[str, float] = {}
    frames: list[np.ndarray] = []
    decode_size = default_decode_size(p.image_size)
    out["decode"] = _timed(lambda: frames.extend(decode_frame(f, decode_size, MAX_PIXELS)[0] for f in files))[
        0
    ]
    batch: list[ImageBatch] = []
    out["canvas copy"] = _timed(lambda: batch.append(ImageBatch.from_frames(frames)))[0]
    b, s = len(frames), p.image_size

    def draw() -> None:
        vp = ViewParams.draw(
            seeded_uniforms(keys, p.views, p.seed), np.tile(np.arange(b), p.views), batch[0].sizes, s
        )
        n, chunk = len(vp.sample), max(1, chunk_elements(device) // (3 * s * s))
        for a in range(0, n, chunk):
            vp.groups(a, min(n, a + chunk))
        centre_boxes(batch[0].sizes)

    out["parameter draw"] = _timed(draw)[0]
    out["ECLE offsets"] = _timed(lambda: engine.offsets(keys_to_u64(list(keys), b)))[0]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--images", type=int, default=64, help="timed images per path")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bank", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--devices",
        nargs="+",
        default=None,
        help="device paths to time (default: cpu, and cuda when present)",
    )
    ap.add_argument("--skip-today", action="store_true", help="do not time the replaced CPU path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    p = DeviceParams(image_size=args.image_size, views=args.views, seed=0)
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(args.views, args.bank, PROJ_DIM)).astype(np.float32)
    centroids = rng.normal(size=(10, FEAT_DIM)).astype(np.float32)
    files = jpeg_files(args.images + args.batch, seed=1)
    warm, timed = files[: args.batch], files[args.batch :]
    keys = [f"s3://pool/{i:08d}.jpg" for i in range(len(files))]
    warm_keys, timed_keys = keys[: args.batch], keys[args.batch :]
    batches = [
        (timed[s : s + args.batch], timed_keys[s : s + args.batch]) for s in range(0, len(timed), args.batch)
    ]
    n = len(timed)
    print(
        f"{args.image_size} px, R={args.views}, bank {args.bank} (511 negatives x 10 repeats), {n} JPEGs of "
        f"~500x375 ({sum(map(len, timed)) / n / 1024:.0f} KiB) in batches of {args.batch}; torch threads "
        f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load {load1()}; model forward not timed"
    )
    print(f"{'path':<26} {'CPU ms/image':>13} {'wall ms/image':>14} {'vs today (CPU)':>15}")
    today_cpu = None
    if not args.skip_today:
        model = StandInModel(args.views * args.batch).eval()
        today_path(warm, warm_keys, p, model, bank, centroids)
        cpu, wall = _timed(lambda: [today_path(f, k, p, model, bank, centroids) for f, k in batches])
        today_cpu = cpu
        print(f"{'today (CPU, replaced)':<26} {cpu / n * 1e3:>13.2f} {wall / n * 1e3:>14.2f} {1.0:>15.3f}")

    def ratio(cpu: float) -> str:
        return f"{cpu / today_cpu:>15.3f}" if today_cpu else f"{'-':>15}"

    decode_size = default_decode_size(p.image_size)
    for name in devices:
        device = torch.device(name)
        scorer = DeviceScorer(StandInModel(p.forward_chunk), p, device, bank, centroids, centroids)

        def run(bs, scorer: DeviceScorer = scorer) -> None:
            items = (([decode_frame(f, decode_size, MAX_PIXELS)[0] for f in fs], ks) for fs, ks in bs)
            for _ in scorer.run(items):
                pass

        run([(warm, warm_keys)])
        cpu, wall = _timed(lambda: run(batches))
        print(f"{'device ' + name:<26} {cpu / n * 1e3:>13.2f} {wall / n * 1e3:>14.2f} {ratio(cpu)}")

    engine = BankECLE(bank, temperature=p.temperature, n_neg=511, repeats=p.ecle_repeats, seed=p.seed)
    host_share(warm, warm_keys, p, engine, torch.device(devices[-1]))
    parts: dict[str, float] = {}
    for fs, ks in batches:
        for k, v in host_share(fs, ks, p, engine, torch.device(devices[-1])).items():
            parts[k] = parts.get(k, 0.0) + v
    total = sum(parts.values())
    for k, v in parts.items():
        print(f"{'  host: ' + k:<26} {v / n * 1e3:>13.2f} {'':>14} {ratio(v)}")
    print(f"{'host share (sum)':<26} {total / n * 1e3:>13.2f} {'':>14} {ratio(total)}  (goal <= 0.125)")
    print(f"load average after: {load1()}")


if __name__ == "__main__":
    main()
