"""The Python side of ``bench/gpu_check.sh``: scoring throughput and GPU utilisation, the CPU-vs-GPU rank
correlation of ECLE and proximity, and scoring through the Ray Data pipeline, on one GPU.

Phases (``--phases``, default all three):

- ``throughput``: the scoring actor's device step (:class:`mak_ray.score.device.DeviceScorer`: R seeded views,
  clean view, bf16 channels_last forward, ECLE against a bank, proximity) on one GPU, fed by decode processes on
  the other CPUs (generated ~500x375 JPEGs -> aspect-keeping frames), for ``--seconds`` after a warm-up. Prints
  images/s, view passes/s (x (R + 1)), GPU utilisation sampled with nvidia-smi in that window, and the host CPU
  per image (decode processes; the actor's own process).
- ``correlation``: the same ``--corr-images`` images scored by the same code on the CPU in float32 and on the GPU
  in bf16, with the same bank and centroids: Spearman rank correlation of ECLE and of proximity (goal >= 0.99);
  the GPU at float16 and float32 too, to tell rounding from a defect.
- ``pipeline``: ``score_pool`` on a folder of the JPEGs, one actor with one GPU, reads and decodes on the other
  CPUs: images/s end to end and after the actor start, GPU utilisation while it runs.

The model is a ResNet-50 (standard stem, 128-d head) trained for ``--train-steps`` SimCLR steps on these images
first (which prints the plain loop's training images/s): the features of an untrained network are so alike that
bf16 rounding alone reorders its ECLE and proximity, which would say nothing about the scoring path. The bank is
the projections of ``--bank`` of the images, the centroids a K-means of their embeddings.

``--device cpu --quick`` runs every phase on the CPU with a tiny model and a few images (the "GPU" side of the
correlation is then the CPU under bf16 autocast), to check the script itself where no GPU is lent.

    python -m bench.gpu_check --device cuda
    python -m bench.gpu_check --device cpu --quick

The target centroids also stand in for the target set whose nearest image gives ``nn_distance``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from bench.images import jpeg_files
from mak_ray.data.decode import decode_frame, default_decode_size
from mak_ray.score.device import DeviceParams, DeviceScorer

MAX_PIXELS = 50_000_000
T4_IMAGES_PER_S = 290  # Ray's ResNet-50 batch-inference benchmark, images/s per T4 (one forward pass each)


# ---------------------------------------------------------------------------------------------- measuring


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


class UtilSampler:
    """GPU utilisation (%) sampled by ``nvidia-smi -lms`` in a background process while active.

    ``command`` replaces the nvidia-smi call (tests); without nvidia-smi, ``values`` stays empty.
    """

    def __init__(self, gpu: int = 0, every_ms: int = 200, command: Sequence[str] | None = None) -> None:
        self.command = (
            list(command)
            if command
            else [
                "nvidia-smi",
                f"--id={gpu}",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                f"-lms={every_ms}",
            ]
        )
        self.values: list[float] = []
        self.available = command is not None or shutil.which("nvidia-smi") is not None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._on = False

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                v = float(line.strip())
            except ValueError:
                continue
            if self._on:
                self.values.append(v)

    def start(self) -> UtilSampler:
        if self.available:
            self._proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def record(self, on: bool) -> None:
        """Keep samples from now on (``on``) or stop keeping them."""
        self._on = on

    def stop(self) -> None:
        self._on = False
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> str:
        if not self.available:
            return "n/a (no nvidia-smi)"
        if not self.values:
            return "n/a (no samples)"
        v = np.asarray(self.values)
        return f"mean {v.mean():.0f}%, median {np.median(v):.0f}%, min {v.min():.0f}% ({len(v)} samples)"


# ---------------------------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Setup:
    device: torch.device
    image_size: int
    arch: str
    width: int
    small_stem: bool
    views: int
    batch: int
    forward_chunk: int
    bank: int
    files: list[bytes]
    workers: int
    cpu_threads: int  # torch threads of the CPU side of the correlation

    @property
    def decode_size(self) -> int:
        return default_decode_size(self.image_size)

    def params(self) -> DeviceParams:
        return DeviceParams(image_size=self.image_size, views=self.views, forward_chunk=self.forward_chunk)

    def model_section(self):
        from mak_ray.config import ModelSection

        return ModelSection(arch=self.arch, width=self.width, small_stem=self.small_stem, proj_dim=128)


def _decode_batch(args: tuple[list[bytes], int]) -> tuple[list[np.ndarray], float]:
    files, decode_size = args
    c0 = time.process_time()
    frames = [decode_frame(f, decode_size, MAX_PIXELS)[0] for f in files]
    return frames, time.process_time() - c0


def _make_jpegs(args: tuple[int, int]) -> list[bytes]:
    n, seed = args
    return jpeg_files(n, seed=seed)


def generate(n: int, workers: int) -> list[bytes]:
    """``n`` JPEGs of ~500x375, generated in ``workers`` processes."""
    per = -(-n // max(1, workers))
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_make_jpegs, [(min(per, n - s), s + 1) for s in range(0, n, per)])
    return [f for p in parts for f in p]


def pretrain(model: torch.nn.Module, s: Setup, frames: list[np.ndarray], steps: int) -> torch.nn.Module:
    """SimCLR steps (:func:`mak_ray.train.loop.train_step`, views rendered on the device, bf16 on CUDA) on these
    frames; prints the plain loop's training images/s. Returns the model in eval mode."""
    from mak_ray.config import TrainSection
    from mak_ray.train.loop import make_optimizer, prepare_model, train_step

    model = prepare_model(model.to(s.device), s.device)
    opt, sched = make_optimizer(model, TrainSection(warmup_epochs=0, epochs=1), s.batch, steps)
    model.train()
    rng = np.random.default_rng(0)
    warm = min(5, steps // 2)
    losses = []
    for k in range(steps):
        if k == warm:
            _sync(s.device)
            t0 = time.perf_counter()
        column = np.empty(s.batch, dtype=object)
        column[:] = [frames[i] for i in rng.choice(len(frames), s.batch, replace=len(frames) < s.batch)]
        losses.append(train_step(model, opt, sched, column, s.image_size, 0.2, s.device))
    _sync(s.device)
    rate = (steps - warm) * s.batch / (time.perf_counter() - t0)
    per = "per GPU" if s.device.type == "cuda" else "on the CPU"
    print(
        f"SimCLR training, plain loop (no Ray Train), {s.batch} frames per step: {rate:,.1f} images/s {per} "
        f"over {steps - warm} steps; loss {float(losses[0]):.3f} -> {float(losses[-1]):.3f}",
        flush=True,
    )
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(
    s: Setup, frames: list[np.ndarray], train_steps: int
) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """The briefly trained model (on the CPU), the bank and the centroids (host arrays)."""
    from mak_ray.mak.proximity import fit_centroids
    from mak_ray.models import build_model

    torch.manual_seed(0)
    model = pretrain(build_model(s.model_section()), s, frames, train_steps)
    scorer = DeviceScorer(model, s.params(), s.device)
    keys = [f"bank-{i}" for i in range(s.bank)]
    pool = frames[: s.bank]
    bank = np.concatenate(
        [
            scorer.launch(pool[a : a + s.batch], keys[a : a + s.batch], "bank").result()["projections"]
            for a in range(0, len(pool), s.batch)
        ],
        axis=1,
    )
    emb = scorer.launch(pool[: 4 * s.batch], keys[: 4 * s.batch], "embed").result()["embedding"]
    return model.cpu().eval(), bank, fit_centroids(emb, k=10, seed=0)


# ---------------------------------------------------------------------------------------------- phases


def phase_throughput(s: Setup, model, bank, centroids, seconds: float, warmup: int = 3) -> None:
    scorer = DeviceScorer(model, s.params(), s.device, bank, centroids, centroids)
    n_files = len(s.files)
    batches_per_pass = n_files // s.batch

    def work() -> Iterator[tuple[list[bytes], int]]:
        i = 0
        while True:
            a = (i % batches_per_pass) * s.batch
            yield s.files[a : a + s.batch], s.decode_size
            i += 1

    sampler = UtilSampler(gpu=s.device.index or 0).start()
    done, decode_cpu, t_start, c_start, images = 0, 0.0, None, None, 0
    with mp.get_context("spawn").Pool(s.workers) as pool:
        decoded = pool.imap(_decode_batch, work(), chunksize=1)

        def feed() -> Iterator[tuple[list[np.ndarray], list[str]]]:
            nonlocal decode_cpu
            for k, (frames, cpu) in enumerate(decoded):
                if k >= warmup:
                    decode_cpu += cpu
                yield frames, [f"k{k}-{j}" for j in range(len(frames))]

        for out in scorer.run(feed()):
            done += 1
            if done == warmup:
                t_start, c_start = time.perf_counter(), time.process_time()
                sampler.record(True)
            elif done > warmup:
                images += len(out["ecle"])
                if time.perf_counter() - t_start >= seconds:
                    break
        sampler.record(False)
        elapsed, main_cpu = time.perf_counter() - t_start, time.process_time() - c_start
        pool.terminate()
    sampler.stop()
    rate = images / elapsed
    passes = rate * (s.views + 1)
    per = "per GPU" if s.device.type == "cuda" else "on the CPU"
    print(
        f"scoring, device step fed by {s.workers} decode processes: {rate:,.1f} images/s {per} "
        f"({passes:,.0f} view passes/s = {passes / T4_IMAGES_PER_S:.1f}x the {T4_IMAGES_PER_S} images/s of a T4; "
        f"goal >= 10x) over {elapsed:.1f} s, {images} images after {warmup} warm-up batches",
        flush=True,
    )
    print(f"  GPU utilisation in steady state: {sampler.summary()} (goal >= 80%)", flush=True)
    print(
        f"  host CPU per image: decode {decode_cpu / images * 1e3:.2f} ms (in the decode processes), "
        f"actor process {main_cpu / images * 1e3:.2f} ms (parameter draw, canvas copy, launches, results)",
        flush=True,
    )


class _CpuBf16(torch.nn.Module):
    """The model under CPU bf16 autocast: the quick mode's stand-in for the GPU side of the correlation."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.base(x).float()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.base.embed(x).float()


def phase_correlation(s: Setup, model, bank, centroids, frames: list[np.ndarray]) -> dict[str, float]:
    """Spearman of ECLE and proximity, CPU float32 against the device path at the scoring precision (bf16), and,
    on CUDA, at float16 and float32 too: if bf16 misses the goal, the other two tell precision from a defect."""
    keys = [f"corr-{i}" for i in range(len(frames))]
    batches = [(frames[a : a + s.batch], keys[a : a + s.batch]) for a in range(0, len(frames), s.batch)]
    threads = torch.get_num_threads()
    torch.set_num_threads(s.cpu_threads)
    t0 = time.perf_counter()
    cpu = list(DeviceScorer(model, s.params(), "cpu", bank, centroids, centroids).run(batches))
    print(f"  CPU float32 path: {time.perf_counter() - t0:.1f} s on {s.cpu_threads} threads", flush=True)
    torch.set_num_threads(threads)
    if s.device.type == "cpu":
        sides = [("CPU bf16 autocast", _CpuBf16(model), s.params())]
    else:
        sides = [
            (f"{s.device.type} {p or 'float32'}", model, dataclasses.replace(s.params(), autocast=p))
            for p in ("bfloat16", "float16", None)
        ]
    out = {}
    for label, m, params in sides:
        t0 = time.perf_counter()
        dev = list(DeviceScorer(m, params, s.device, bank, centroids, centroids).run(batches))
        took = time.perf_counter() - t0
        for col in ("ecle", "proximity"):
            a = np.concatenate([c[col] for c in cpu])
            b = np.concatenate([c[col] for c in dev])
            rho = spearman(a, b)
            out.setdefault(col, rho)  # the first side is the scoring precision
            goal = " (goal >= 0.99)" if label == sides[0][0] else ""
            print(
                f"rank correlation of {col}, CPU float32 vs {label}, {len(frames)} images: {rho:.4f}{goal}; "
                f"max |diff| {np.abs(a - b).max():.2e}, spread (std) {a.std():.3e}",
                flush=True,
            )
        print(f"  {label} path: {took:.1f} s", flush=True)
    return out


def phase_pipeline(s: Setup, model, centroids, n_images: int, tmp: str) -> None:
    """``score_pool`` over a folder of the JPEGs with one GPU actor (or one CPU actor without a GPU)."""
    import ray

    from mak_ray.config import config_from_dict
    from mak_ray.layout import ShardedOutput
    from mak_ray.models import save_model
    from mak_ray.score import score_pool

    pool_dir = os.path.join(tmp, "pool")
    for i in range(n_images):
        d = os.path.join(pool_dir, f"c{i % 10}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:07d}.jpg"), "wb") as f:
            f.write(s.files[i % len(s.files)])
    model_uri = os.path.join(tmp, "model.pt")
    save_model(model, s.model_section(), model_uri)
    gpu = s.device.type == "cuda"
    cfg = config_from_dict(
        {
            "run": {"output_uri": os.path.join(tmp, "out"), "seed": 0},
            "data": {"pool": pool_dir, "image_size": s.image_size, "files_per_shard": 256, "read_cpus": 1.0},
            "model": dataclasses.asdict(s.model_section()),
            "score": {
                "views": s.views,
                "bank_size": s.bank,
                "batch_size": s.batch,
                "num_actors": 1,
                "min_actors": 1,
                "cpus_per_actor": 1.0,
                "gpus_per_actor": 1.0 if gpu else 0.0,
                "log_every_s": 3600,
            },
        }
    )
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=1 if gpu else 0,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="rg-", dir="/tmp"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = UtilSampler(gpu=s.device.index or 0).start()
    try:
        sampler.record(True)
        out = ShardedOutput(cfg.run.output_uri)
        summary = score_pool(cfg, model_uri, centroids, out, out.file("bank.npy"), targets=centroids)
    finally:
        sampler.stop()
        ray.shutdown()
    assert summary["scored"] == n_images, summary
    steady = summary["steady_images_per_s"]
    print(
        f"scoring through the Ray Data pipeline (score_pool; {n_images} images, bank {s.bank} built first, "
        f"1 actor with {'1 GPU' if gpu else '1 CPU'}, reads on {os.cpu_count()} CPUs): "
        f"{summary['images_per_s']:,.1f} images/s end to end, "
        f"{steady if steady is None else f'{steady:,.1f}'} images/s after the actor start "
        f"({summary['startup_seconds']} s)",
        flush=True,
    )
    print(f"  GPU utilisation during the stage (bank build included): {sampler.summary()}", flush=True)


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (checks the script on a CPU)")
    ap.add_argument("--phases", nargs="+", default=["throughput", "correlation", "pipeline"])
    ap.add_argument("--seconds", type=float, default=None, help="steady-state scoring time (throughput)")
    ap.add_argument("--batch", type=int, default=None, help="images per device batch")
    ap.add_argument("--corr-images", type=int, default=None)
    ap.add_argument("--pipeline-images", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: CPUs - 2)")
    ap.add_argument("--train-steps", type=int, default=None, help="SimCLR steps before scoring")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU side (default: all)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick to check the script")
    q = args.quick
    workers = args.workers or max(1, (os.cpu_count() or 2) - 2)
    n_files = 64 if q else 2048
    t0 = time.perf_counter()
    files = generate(n_files, workers)
    s = Setup(
        device=device,
        image_size=32 if q else 224,
        arch="resnet18" if q else "resnet50",
        width=8 if q else 64,
        small_stem=q,
        views=10,
        batch=args.batch or (16 if q else 128),
        forward_chunk=256,
        bank=32 if q else 1024,
        files=files,
        workers=workers,
        cpu_threads=args.threads or os.cpu_count() or 1,
    )
    if device.type == "cpu":
        torch.set_num_threads(s.cpu_threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"gpu_check on {name}: {s.arch} {s.image_size} px, R={s.views}, batch {s.batch}, bank {s.bank}, "
        f"{n_files} generated JPEGs of ~500x375 ({sum(map(len, files)) / n_files / 1024:.0f} KiB), "
        f"{os.cpu_count()} CPUs, {workers} decode processes",
        flush=True,
    )
    n_frames = max(s.bank, args.corr_images or (32 if q else 512))
    frames, _ = _decode_batch((files[:n_frames] + files[: max(0, n_frames - n_files)], s.decode_size))
    model, bank, centroids = build(s, frames, args.train_steps or (10 if q else 100))
    print(f"setup (JPEGs, SimCLR steps, bank, centroids): {time.perf_counter() - t0:.1f} s", flush=True)
    if "throughput" in args.phases:
        phase_throughput(s, model, bank, centroids, args.seconds or (3.0 if q else 30.0))
    if "correlation" in args.phases:
        phase_correlation(s, model, bank, centroids, frames[: args.corr_images or (32 if q else 512)])
    if "pipeline" in args.phases:
        tmp = tempfile.mkdtemp(prefix="gpu-check-")
        try:
            phase_pipeline(s, model, centroids, args.pipeline_images or (96 if q else 3072), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"gpu_check done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
