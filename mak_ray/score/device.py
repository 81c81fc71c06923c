"""The scoring actor's work on its device: augment, forward, normalise, ECLE and proximity, batch by batch.

From decoded uint8 frames to output columns, every step is a torch op on one device (a GPU, or the CPU for CPU
actors and tests), and only the output columns come back to the host:

- the frames go to the device once, as a padded uint8 canvas (:class:`mak_ray.augment.ImageBatch`);
- R seeded SimCLR views and the clean view are rendered there (:mod:`mak_ray.augment`);
- the model runs under autocast (bf16 by default) with channels_last activations on CUDA, in float32 on a CPU;
- projections and embeddings are L2-normalised, ECLE runs against the bank held on the device
  (:class:`mak_ray.mak.ecle.BankECLE`), proximity against the centroids held there;
- unusable rows (a non-finite or all-zero embedding or projection) are flagged, not dropped: every number of a
  row depends on that row alone, so flagging after the fact equals dropping before.

The host's share per batch is the parameter table (hashes and a vectorised Philox per view), the frames' copy
into the canvas, and the window offsets of ECLE. :meth:`DeviceScorer.run` keeps two batches in flight on CUDA:
batch k+1 is laid out in pinned memory, copied on a side stream and its kernels queued before batch k's columns
are read back, so its copy overlaps batch k's compute and the GPU never waits for the host's per-batch work.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mak_ray.augment import ImageBatch, clean_batch, seeded_views
from mak_ray.mak.ecle import BankECLE, keys_to_u64
from mak_ray.validate import as_float_array, check_nonzero_rows

MODES = ("score", "embed", "bank")
TARGET_BLOCK = 65_536  # target rows per similarity block in the nearest-target distance


@dataclass(frozen=True)
class DeviceParams:
    """What the device step needs from the scorer's configuration."""

    image_size: int
    views: int = 10
    seed: int = 0
    temperature: float = 0.2
    ecle_batch_size: int = 512  # negatives per sample and repeat + 1
    ecle_repeats: int = 10
    forward_chunk: int = 256  # images per model call: bounds activation memory
    autocast: str | None = "bfloat16"  # CUDA forward precision: "bfloat16", "float16", or None for float32


def pick_device(use_gpu: bool) -> torch.device:
    """CUDA when asked for and present, else the CPU."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` itself, moved to ``device`` in eval mode: channels_last weights on CUDA (the layout its bf16
    convolutions run fastest in), the default layout elsewhere."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return model.to(device).to(memory_format=fmt).eval()


def forward(fn: Any, x: torch.Tensor, chunk: int, autocast: str | None = "bfloat16") -> torch.Tensor:
    """``fn`` over ``x`` in chunks of ``chunk`` images, float32 out, on ``x``'s device; on CUDA under autocast to
    ``autocast`` (None: float32, TF32 as torch is set) with channels_last inputs."""
    cuda = x.device.type == "cuda"
    amp = (
        torch.autocast("cuda", dtype=getattr(torch, autocast))
        if cuda and autocast
        else contextlib.nullcontext()
    )
    outs = []
    with torch.inference_mode(), amp:
        for s in range(0, max(1, x.shape[0]), chunk):  # an empty batch still gives [0, F]
            xi = x[s : s + chunk]
            if cuda:
                xi = xi.contiguous(memory_format=torch.channels_last)
            outs.append(fn(xi).float())
    return torch.cat(outs)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm along the last axis (zero rows stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _bad_embedding(emb: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(emb).all(dim=1) | ~(emb.abs() > 0).any(dim=1)


def _bad_projection(z: torch.Tensor) -> torch.Tensor:
    """``z`` ``[R, B, D]`` unit projections: a sample is unusable when any view is non-finite or zero."""
    return ~torch.isfinite(z).all(dim=2).all(dim=0) | (z.norm(dim=2) == 0).any(dim=0)


def _unit_host(name: str, x: Any, ndim: int) -> np.ndarray:
    """Validated float rows scaled to unit norm, as the host ECLE and proximity functions scale them."""
    arr = as_float_array(name, x, ndim)
    return arr / check_nonzero_rows(name, arr)[..., None].astype(arr.dtype)


class Pending:
    """Output columns of one launched batch: device tensors being copied to the host.

    On CUDA the copies go into pinned memory without blocking, and :meth:`result` waits for them; elsewhere the
    tensors are already on the host.
    """

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self._event = None
        first = next(iter(columns.values()), None)
        if first is not None and first.device.type == "cuda":
            host = {}
            for k, v in columns.items():
                host[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                host[k].copy_(v, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            columns = host
        self._columns = columns

    def result(self) -> dict[str, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return {k: v.numpy().copy() for k, v in self._columns.items()}


def launch_batch(
    model: torch.nn.Module,
    batch: ImageBatch,
    keys: Sequence[str],
    params: DeviceParams,
    mode: str = "score",
    bank: BankECLE | None = None,
    centroids: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> Pending:
    """Queue one batch's device work; :meth:`Pending.result` gives its host columns.

    - ``score``: ``embedding`` float32 [B, F], ``ecle``, ``proximity`` and ``nn_distance`` float64 [B] (NaN
      where unusable), ``bad_embedding`` and ``bad_projection`` bool [B];
    - ``embed``: ``embedding`` and ``bad_embedding``;
    - ``bank``: ``projections`` float32 [R, B, D], unit rows.

    ``model`` and ``batch`` are on one device; so are ``bank``, ``centroids`` and ``targets`` (the target
    images' embeddings; unit rows) in score mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if mode == "score" and (bank is None or centroids is None or targets is None):
        raise ValueError("score mode needs a negative bank, the target centroids and the target embeddings")
    s, out = params.image_size, {}
    with torch.inference_mode():
        if mode in ("score", "embed"):
            emb = forward(model.embed, clean_batch(batch, s), params.forward_chunk, params.autocast)
            out["embedding"], bad_emb = emb, _bad_embedding(emb)
        if mode in ("score", "bank"):
            r, b = params.views, len(batch)
            views = seeded_views(batch, keys, r, params.seed, s)
            zr = forward(model, views.view(r * b, 3, s, s), params.forward_chunk, params.autocast)
            z = unit_rows(zr.view(r, b, zr.shape[-1]))
            if mode == "bank":
                return Pending({"projections": z})
        if mode == "embed":
            return Pending({"embedding": emb, "bad_embedding": bad_emb})
        bad_proj = _bad_projection(z)
        bad = bad_emb | bad_proj
        e = bank(torch.where(bad[None, :, None], torch.zeros_like(z), z), keys_to_u64(list(keys), len(keys)))
        u = unit_rows(emb)
        prox = 1.0 - (u @ centroids.T).amax(dim=1)
        nn = 1.0 - nearest_similarity(u, targets)
        nan = torch.full_like(e, float("nan"))
        out["ecle"] = torch.where(bad, nan, e)
        out["proximity"] = torch.where(bad, nan, prox.double())
        out["nn_distance"] = torch.where(bad, nan, nn.double())
        out["bad_embedding"], out["bad_projection"] = bad_emb, bad_proj
    return Pending(out)


def nearest_similarity(u: torch.Tensor, targets: torch.Tensor, block: int = TARGET_BLOCK) -> torch.Tensor:
    """Each unit row's largest cosine similarity to a row of ``targets``, in blocks of target rows (the
    similarity matrix held at once is ``[B, block]``)."""
    best = torch.full((u.shape[0],), -float("inf"), device=u.device, dtype=u.dtype)
    for s in range(0, targets.shape[0], block):
        best = torch.maximum(best, (u @ targets[s : s + block].T).amax(dim=1))
    return best


def score_batch(
    model: torch.nn.Module,
    batch: ImageBatch,
    keys: Sequence[str],
    bank: BankECLE,
    centroids: torch.Tensor,
    targets: torch.Tensor,
    params: DeviceParams,
) -> dict[str, np.ndarray]:
    """One batch's score columns (see :func:`launch_batch`), waiting for them."""
    return launch_batch(model, batch, keys, params, "score", bank, centroids, targets).result()


class DeviceScorer:
    """A scoring actor's device state: the model, the bank, the centroids and the target embeddings on the
    device, and a copy stream.

    ``bank`` ``[R, M, D]``, ``centroids`` ``[k, F]`` and ``targets`` ``[T, F]`` are host arrays, scaled to unit
    rows here as the host ECLE and proximity scale them; with a bank of fewer than ``ecle_batch_size - 1`` samples every bank sample
    is a negative.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        params: DeviceParams,
        device: torch.device | str,
        bank: Any = None,
        centroids: Any = None,
        targets: Any = None,
    ) -> None:
        self.device = torch.device(device)
        self.params = params
        self.model = prepare_model(model, self.device)
        self.bank = None
        if bank is not None:
            b = _unit_host("negatives", bank, 3)
            self.bank = BankECLE(
                torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)),
                temperature=params.temperature,
                n_neg=min(params.ecle_batch_size - 1, b.shape[1]),
                repeats=params.ecle_repeats,
                seed=params.seed,
                device=self.device,
            )
        self.centroids = None
        if centroids is not None:
            c = _unit_host("centroids", centroids, 2).astype(np.float32)
            self.centroids = torch.from_numpy(c).to(self.device)
        self.targets = None
        if targets is not None:
            t = _unit_host("target embeddings", targets, 2).astype(np.float32)
            self.targets = torch.from_numpy(t).to(self.device)
        cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels

    def stage(self, frames: Any) -> ImageBatch:
        """Frames laid out on the host (pinned for a GPU) and sent to the device on the copy stream."""
        cuda = self.device.type == "cuda"
        return ImageBatch.from_frames(frames, pin=cuda).to(self.device, self.copy_stream)

    def launch(self, frames: Any, keys: Sequence[str], mode: str = "score") -> Pending:
        return launch_batch(
            self.model, self.stage(frames), keys, self.params, mode, self.bank, self.centroids, self.targets
        )

    def run(
        self, batches: Iterable[tuple[Any, Sequence[str]]], mode: str = "score", depth: int = 2
    ) -> Iterator[dict[str, np.ndarray]]:
        """Host columns of each ``(frames, keys)`` batch, in order, with up to ``depth`` batches in flight."""
        pending: deque[Pending] = deque()
        for frames, keys in batches:
            pending.append(self.launch(frames, keys, mode))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
