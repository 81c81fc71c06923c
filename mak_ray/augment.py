"""SimCLR augmentations on any torch device, shared by training and scoring, applied to whole batches at once.

Input is an :class:`ImageBatch`: decoded RGB uint8 frames of any size (the reader keeps each source image's aspect
ratio, see :mod:`mak_ray.data.decode`) laid out in one padded canvas ``[B, H, W, 3]`` on the device, with each
row's height and width kept on the host. Output views are ``[N, 3, S, S]`` float32, normalised, on the same device.

The augmentation is the torchvision SimCLR set (RandomResizedCrop with scale (0.08, 1) and ratio (3/4, 4/3) drawn
in the row's own frame, horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 in a random order, grayscale
with p=0.2, Gaussian blur with p=0.5 above 64 px), computed for every (sample, view) at once: each item draws its
own parameters into a small host table, and every pixel op is a batched tensor op on the device that follows the
``torchvision.transforms.v2.functional`` formula for float images (clamped to [0, 1] after each op):

- crop + resize: separable bilinear (``align_corners=False``, no antialias, edges clamped inside the crop, as
  ``F.resized_crop(..., antialias=False)`` does), done with row/column gathers, flip folded into the column
  indices;
- jitter: per-item factors; the four ops run in four slots, each slot applying to each item the op its permutation
  names there;
- blur: per-item separable Gaussian kernels as banded matrices with the reflect padding folded in (one batched
  matmul per axis).

Parameters are drawn on the host (uniforms, crop boxes, and the index list of the items each op applies to), so
the device work never waits on a device-to-host read. The clean view (embeddings, evaluation) is the standard
evaluation transform: the centred square of side min(h, w), resized to S (resize the shorter side, centre crop).

:func:`seeded_views` makes view ``r`` of the sample with key ``k`` a function of ``(seed, k, r)`` and the frame
alone: its parameters come from a Philox stream keyed by :func:`view_seed`, and no op mixes items, so the result
does not depend on the batch the sample is in. :func:`augment_batch` (training) draws fresh parameters from a key
taken from torch's global RNG, so ``torch.manual_seed`` still governs training randomness.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# ImageNet statistics: a fixed normalisation, so every stage feeds the model the same input scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# blur only helps (and is only used by SimCLR) on larger images; at 32 px it destroys them
BLUR_MIN_SIZE = 64

# SimCLR parameters (Chen et al. 2020), as torchvision names them.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes, then falls back to a centre crop
FLIP_P = 0.5
JITTER_P = 0.8
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
GRAY_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)

# Layout of the per-item uniform draws in [0, 1): one fixed-size row per (sample, view).
U_CROP = 0  # CROP_ATTEMPTS x (scale, log-ratio, top, left)
U_FLIP = U_CROP + 4 * CROP_ATTEMPTS
U_JITTER = U_FLIP + 1
U_FACTORS = U_JITTER + 1  # brightness, contrast, saturation, hue
U_ORDER = U_FACTORS + 4  # argsort of 4 uniforms = a uniform random permutation of the jitter ops
U_GRAY = U_ORDER + 4
U_BLUR = U_GRAY + 1
U_SIGMA = U_BLUR + 1
N_UNIFORMS = U_SIGMA + 1

# float elements per chunk of views: on a CPU a chunk stays cache-sized (~16 MB), on a GPU it is large enough
# that kernel launches stay few
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def blur_kernel_size(image_size: int) -> int:
    """Blur kernel side: ~10% of the image side, odd, at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def chunk_elements(device: torch.device) -> int:
    return CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]


def host_to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without stalling the host: through pinned memory, non-blocking, on CUDA.

    A non-blocking copy from pageable memory may make the driver wait for the stream; from pinned memory it never
    does, and torch's caching host allocator keeps the pinned block until the copy has run.
    """
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


# ------------------------------------------------------------------------------------------ the batch


@dataclass
class ImageBatch:
    """Decoded frames of one batch: ``pixels`` uint8 ``[B, H, W, 3]`` (row i's frame is
    ``pixels[i, :h_i, :w_i]``, the rest is padding that no op reads) and ``sizes`` int64 ``[B, 2]`` (h_i, w_i)
    on the host, so that parameters are drawn without reading the device.

    Ray Data carries frames as a tensor column: one ``[h, w, 3]`` array per row (a variable-shaped tensor column
    when sizes differ, a plain one when they are equal). :meth:`from_frames` lays a batch of them out in one
    canvas, in pinned memory when it is going to a GPU.
    """

    pixels: torch.Tensor
    sizes: np.ndarray
    _float: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    @classmethod
    def from_frames(cls, frames: Any, pin: bool = False) -> ImageBatch:
        """A host batch from uint8 frames: an array ``[B, H, W, 3]`` (all one size) or a sequence / object array
        of ``[h, w, 3]`` arrays. ``pin``: lay it out in pinned memory (for a non-blocking copy to a GPU)."""
        if isinstance(frames, np.ndarray) and frames.dtype != object:
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"expected uint8 images [B, S, S, 3], got shape {frames.shape}")
            _check_uint8(frames)
            b, h, w, _ = frames.shape
            sizes = np.tile(np.array([[h, w]], dtype=np.int64), (b, 1))
            if pin:
                pixels = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
                pixels.numpy()[...] = frames
            else:  # Ray/Arrow buffers are read-only; torch wants a writable base
                pixels = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
            return cls(pixels, sizes)
        frames = list(frames)
        for f in frames:
            if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[-1] != 3:
                raise ValueError(
                    f"expected uint8 frames [h, w, 3], got {type(f).__name__} {getattr(f, 'shape', None)}"
                )
            _check_uint8(f)
        sizes = np.array([f.shape[:2] for f in frames], dtype=np.int64).reshape(len(frames), 2)
        if (sizes <= 0).any():
            raise ValueError("a frame has zero height or width")
        h, w = sizes.max(axis=0) if len(frames) else (1, 1)
        pixels = torch.empty((len(frames), int(h), int(w), 3), dtype=torch.uint8, pin_memory=pin)
        canvas = pixels.numpy()
        for i, f in enumerate(frames):
            canvas[i, : f.shape[0], : f.shape[1]] = f
        return cls(pixels, sizes)

    def to(self, device: torch.device | str, copy_stream: Any = None) -> ImageBatch:
        """This batch on ``device``. On CUDA with ``copy_stream``, the copy runs on that stream (overlapping
        the compute already queued) and the current stream waits for it before using the pixels."""
        device = torch.device(device)
        if device == self.pixels.device:
            return self
        if device.type == "cuda" and copy_stream is not None:
            main = torch.cuda.current_stream(device)
            with torch.cuda.stream(copy_stream):
                pixels = self.pixels.to(device, non_blocking=True)
            main.wait_stream(copy_stream)
            pixels.record_stream(main)  # allocated on the copy stream, used on the main one
        else:
            pixels = self.pixels.to(device, non_blocking=True)
        return ImageBatch(pixels, self.sizes)

    def float_pixels(self) -> torch.Tensor:
        """``[B, 3, H, W]`` float32 in [0, 1], computed once per batch (views and the clean view share it)."""
        if self._float is None:
            self._float = self.pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
        return self._float


def _check_uint8(a: np.ndarray) -> None:
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {a.dtype}")


def as_batch(images: Any) -> ImageBatch:
    """An :class:`ImageBatch` as is, else a host batch from frames (see :meth:`ImageBatch.from_frames`)."""
    return images if isinstance(images, ImageBatch) else ImageBatch.from_frames(images)


# ------------------------------------------------------------------------------------------ parameters

_PHILOX_M = (np.uint64(0xD2E7470EE14C6C93), np.uint64(0xCA5A826395121157))
_PHILOX_W = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBB67AE8584CAA73B))
_LO32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)


def view_seed(seed: int, key: str, view: int) -> int:
    """A 63-bit RNG seed for view ``view`` of sample ``key``: stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{key}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _mulhi(m: np.uint64, x: np.ndarray) -> np.ndarray:
    """High 64 bits of the 128-bit products ``m * x`` (32-bit halves; numpy has no 128-bit multiply)."""
    m0, m1 = m & _LO32, m >> _S32
    x0, x1 = x & _LO32, x >> _S32
    p01, p10, p11 = x0 * m1, x1 * m0, x1 * m1
    mid = (x0 * m0) >> _S32
    mid += p01 & _LO32
    mid += p10 & _LO32
    p11 += p01 >> _S32
    p11 += p10 >> _S32
    p11 += mid >> _S32
    return p11


def view_uniforms(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
    """``[len(seeds), N_UNIFORMS]`` uniforms in [0, 1): row i is the first draws of
    ``np.random.Generator(np.random.Philox(key=seeds[i])).random``, computed for all rows at once.

    numpy's Philox4x64-10 (counter starting at 1, key ``(seed, 0)``) and its double conversion
    ``(x >> 11) * 2**-53``, vectorised over rows and counter blocks.
    """
    keys = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    n, blocks = len(keys), -(-N_UNIFORMS // 4)
    c0 = np.empty((blocks, n), dtype=np.uint64)
    c0[:] = np.arange(1, blocks + 1, dtype=np.uint64)[:, None]
    c1, c2, c3 = (np.zeros((blocks, n), dtype=np.uint64) for _ in range(3))
    k0, k1 = keys.copy(), np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0 += _PHILOX_W[0]
                k1 += _PHILOX_W[1]
            hi0, lo0 = _mulhi(_PHILOX_M[0], c0), c0 * _PHILOX_M[0]
            hi1, lo1 = _mulhi(_PHILOX_M[1], c2), c2 * _PHILOX_M[1]
            hi1 ^= c1
            hi1 ^= k0
            hi0 ^= c3
            hi0 ^= k1
            c0, c1, c2, c3 = hi1, lo1, hi0, lo0
    raw = np.stack([c0, c1, c2, c3], axis=2).transpose(1, 0, 2).reshape(n, 4 * blocks)[:, :N_UNIFORMS]
    return (raw >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def crop_boxes(u: np.ndarray, height: Any, width: Any) -> np.ndarray:
    """RandomResizedCrop boxes ``[N, 4]`` int64 (top, left, h, w) from the crop columns of ``u``, in frames of
    ``height`` x ``width`` (scalars, or one per item).

    torchvision's sampler, vectorised: up to CROP_ATTEMPTS (area fraction, log aspect ratio) draws, the first box
    that fits wins, and if none fits, the centre crop clamped to the ratio range.
    """
    n = u.shape[0]
    height = np.broadcast_to(np.asarray(height, dtype=np.int64), (n,))
    width = np.broadcast_to(np.asarray(width, dtype=np.int64), (n,))
    att = u[:, U_CROP : U_CROP + 4 * CROP_ATTEMPTS].reshape(n, CROP_ATTEMPTS, 4)
    area = (height * width)[:, None]
    target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * att[..., 0])
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = np.exp(lo + (hi - lo) * att[..., 1])
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, like Python's round()
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    top = np.floor(att[rows, first, 2] * (height - h + 1)).astype(np.int64)  # randint(0, height - h + 1)
    left = np.floor(att[rows, first, 3] * (width - w + 1)).astype(np.int64)

    in_ratio = width / height  # fallback: centre crop
    narrow, wide = in_ratio < CROP_RATIO[0], in_ratio > CROP_RATIO[1]
    fw = np.where(wide, np.round(height * CROP_RATIO[1]).astype(np.int64), width)
    fh = np.where(narrow, np.round(width / CROP_RATIO[0]).astype(np.int64), height)
    miss = ~ok.any(axis=1)
    h[miss], w[miss] = fh[miss], fw[miss]
    top[miss], left[miss] = (height[miss] - fh[miss]) // 2, (width[miss] - fw[miss]) // 2
    return np.stack([top, left, h, w], axis=1)


def centre_boxes(sizes: np.ndarray) -> np.ndarray:
    """The clean view's boxes ``[B, 4]`` (top, left, side, side): the centred square of side min(h, w)."""
    h, w = sizes[:, 0], sizes[:, 1]
    side = np.minimum(h, w)
    return np.stack([(h - side) // 2, (w - side) // 2, side, side], axis=1).astype(np.int64)


@dataclass
class ViewParams:
    """Per-item augmentation parameters on the host; item n is a view of batch row ``sample[n]``."""

    sample: np.ndarray  # int64 [N]
    boxes: np.ndarray  # int64 [N, 4] (top, left, h, w)
    flip: np.ndarray  # bool [N]
    jitter: np.ndarray  # bool [N]
    factors: np.ndarray  # float32 [N, 4]: brightness, contrast, saturation, hue
    order: np.ndarray  # int64 [N, 4]: op applied in each jitter slot
    gray: np.ndarray  # bool [N]
    blur: np.ndarray  # bool [N]
    sigma: np.ndarray  # float64 [N]

    @classmethod
    def draw(cls, u: np.ndarray, sample: np.ndarray, sizes: np.ndarray, image_size: int) -> ViewParams:
        """Parameters from uniforms ``u`` ``[N, N_UNIFORMS]`` for views of rows ``sample`` of frames ``sizes``."""
        sample = np.asarray(sample, dtype=np.int64)
        hw = sizes[sample] if len(sample) else np.zeros((0, 2), dtype=np.int64)
        f = u[:, U_FACTORS : U_FACTORS + 4]
        b, c, s, h = JITTER
        factors = np.stack(
            [1 - b + 2 * b * f[:, 0], 1 - c + 2 * c * f[:, 1], 1 - s + 2 * s * f[:, 2], -h + 2 * h * f[:, 3]],
            1,
        ).astype(np.float32)
        return cls(
            sample=sample,
            boxes=crop_boxes(u, hw[:, 0], hw[:, 1]),
            flip=u[:, U_FLIP] < FLIP_P,
            jitter=u[:, U_JITTER] < JITTER_P,
            factors=factors,
            order=np.argsort(u[:, U_ORDER : U_ORDER + 4], axis=1, kind="stable"),
            gray=u[:, U_GRAY] < GRAY_P,
            blur=(u[:, U_BLUR] < BLUR_P) & (image_size > BLUR_MIN_SIZE),
            sigma=BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, U_SIGMA],
        )

    def groups(self, a: int, b: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Items of ``[a, b)`` (indices relative to ``a``) each op applies to, concatenated, with each group's
        (start, stop): the 16 (jitter slot, op) groups in slot-major order, then grayscale, then blur."""
        parts = []
        on = self.jitter[a:b]
        for slot in range(4):
            for op_id in range(4):
                parts.append(np.flatnonzero(on & (self.order[a:b, slot] == op_id)))
        parts += [np.flatnonzero(self.gray[a:b]), np.flatnonzero(self.blur[a:b])]
        bounds = np.cumsum([0] + [len(p) for p in parts])
        return np.concatenate(parts).astype(np.int64), list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


# ------------------------------------------------------------------------------------------ ops


def _bilinear_taps(
    start: torch.Tensor, length: torch.Tensor, out_size: int, flip: torch.Tensor | None = None
):
    """Source indices (i0, i1) and weight of i1 for resizing [start, start+length) to ``out_size`` pixels.

    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` along one axis: source coordinate
    ``(d + 0.5) * length / out - 0.5`` clamped at 0, upper neighbour clamped at the crop's last pixel, identity when
    the length already matches. ``flip`` reverses the output order (horizontal flip after the resize).
    """
    d = torch.arange(out_size, dtype=torch.float32, device=start.device)
    if flip is not None:
        d = torch.where(flip[:, None], out_size - 1 - d, d)
    scale = (length.to(torch.float32) / out_size)[:, None]
    src = ((d + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = torch.minimum(src.floor().to(torch.int64), length[:, None] - 1)
    lam = (src - i0).clamp_(0, 1)
    same = (length == out_size)[:, None]
    i0 = torch.where(same, d.to(torch.int64), i0)
    lam = torch.where(same, torch.zeros_like(lam), lam)
    i1 = i0 + (i0 < length[:, None] - 1).to(torch.int64)
    return i0 + start[:, None], i1 + start[:, None], lam


def resized_crop(
    images: torch.Tensor, sample: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None, size: int
) -> torch.Tensor:
    """Crop ``boxes`` (top, left, h, w) of ``images[sample]`` (float ``[B, C, H, W]``) and resize to ``size``
    (bilinear), flipping where ``flip``; ``[n, C, size, size]``."""
    _, c, height, width = images.shape
    n = sample.shape[0]
    y0, y1, ly = _bilinear_taps(boxes[:, 0], boxes[:, 2], size)
    x0, x1, lx = _bilinear_taps(boxes[:, 1], boxes[:, 3], size, flip)
    rows = images.reshape(-1, width)  # [B*C*H, W]
    channels = torch.arange(c, device=images.device)
    base = (sample[:, None] * c + channels[None, :]) * height  # [n, C]: first row of each image plane
    r0 = (base[:, :, None] + y0[:, None, :]).reshape(-1)
    r1 = (base[:, :, None] + y1[:, None, :]).reshape(-1)
    ly = ly[:, None, :, None]
    v = (
        rows.index_select(0, r0).view(n, c, size, width) * (1 - ly)
        + rows.index_select(0, r1).view(n, c, size, width) * ly
    )  # vertical pass: [n, C, size, W]
    gx0 = x0[:, None, None, :].expand(n, c, size, size)
    gx1 = x1[:, None, None, :].expand(n, c, size, size)
    lx = lx[:, None, None, :]
    return v.gather(3, gx0) * (1 - lx) + v.gather(3, gx1) * lx


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``[n, 1, H, W]`` (torchvision's weights)."""
    return x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (x * f + other * (1 - f)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_brightness`` with one factor per image of ``x`` ``[n, 3, H, W]`` float in [0, 1]."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_contrast`` per image: blend with the mean of the image's grayscale."""
    g = _grayscale(x)
    # Two-stage sum: every reduction has several outputs or is tiny, so torch never splits one image's sum across
    # threads, and an image's mean is bit-identical whatever else is in the batch.
    mean = g.sum(dim=-1).sum(dim=-1, keepdim=True) / (g.shape[-1] * g.shape[-2])
    return _blend(x, mean.view(-1, 1, 1, 1), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_saturation`` per image: blend with the image's grayscale."""
    return _blend(x, _grayscale(x), factor)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's float RGB -> HSV (h in [0, 1)), on ``[..., 3, H, W]``."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = image.amin(dim=-3), image.amax(dim=-3)  # aminmax over channels is much slower on CPU
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / divisor).unbind(dim=-3)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(maxc_eq_g & maxc_neq_r)
    hr = bc.sub_(gc).mul_(~maxc_neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(maxc_neq_r.logical_and_(maxc_eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """HSV -> float RGB on ``[n, 3, H, W]``, in branchless form.

    Channel c = v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (6h + o_c) mod 6, o = (5, 3, 1): the same sector
    formulas as torchvision's table lookup (equal to float rounding), without its slow int64 index gather.
    """
    h, s, v = img.unbind(dim=-3)
    h6 = h * 6
    vs = v * s
    out = []
    for offset in (5.0, 3.0, 1.0):
        k = (h6 + offset).remainder_(6.0)
        w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        out.append(v - vs * w)
    return torch.stack(out, dim=-3)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_hue`` per image: shift the hue by ``factor`` in [-0.5, 0.5] turns."""
    hsv = _rgb_to_hsv(x)
    h = hsv[:, 0].add(factor.view(-1, 1, 1)).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _reflect_blur_matrices(sigma: torch.Tensor, size: int, kernel: int) -> torch.Tensor:
    """``[n, size, size]`` matrices M with ``row @ M`` = 1-D Gaussian blur of ``row``, reflect padding folded in.

    Gaussian taps as ``F.gaussian_blur`` builds them; a banded matmul is much faster here than a grouped conv.
    """
    device = sigma.device
    n = sigma.shape[0]
    radius = kernel // 2
    t = torch.arange(kernel, dtype=torch.float32, device=device) - radius
    taps = torch.softmax(-(t[None, :] ** 2) / (2 * sigma.to(torch.float32)[:, None] ** 2), dim=1)  # [n, k]
    out_idx = torch.arange(size, device=device)
    src = out_idx[None, :] + t.to(torch.int64)[:, None]  # [k, size]
    src = src.abs()
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)
    m = torch.zeros(n, size, size, dtype=torch.float32, device=device)
    items = torch.arange(n, device=device)[:, None]
    for j in range(kernel):  # taps that reflect onto the same source pixel add up
        m.index_put_(
            (items, src[j][None, :].expand(n, size), out_idx[None, :]),
            taps[:, j : j + 1].expand(-1, size),
            accumulate=True,
        )
    return m


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of square ``x`` ``[n, 3, S, S]`` with one sigma per image (reflect padding)."""
    m = _reflect_blur_matrices(sigma, x.shape[-1], kernel).unsqueeze(1)  # [n, 1, S, S]
    return torch.matmul(m.transpose(-1, -2), torch.matmul(x, m))


@functools.cache
def _normaliser(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD as ``[1, 3, 1, 1]`` tensors on ``device``, made once: a fresh small tensor on a GPU would be a
    blocking copy, which waits for all the work queued before it. Made outside inference mode, so that training
    (with autograd) and scoring (in inference mode) can both use them."""
    with torch.inference_mode(False):
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return mean, std


def render_views(batch: ImageBatch, p: ViewParams, image_size: int, out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` ``[N, 3, S, S]`` (on the batch's device) item n = the SimCLR view of row ``p.sample[n]``
    under parameters ``p``. Device work only: parameters and op groups travel host-to-device, nothing returns."""
    device = batch.device
    src = batch.float_pixels()
    n = len(p.sample)
    sample = host_to_device(p.sample, device)
    boxes = host_to_device(p.boxes, device)
    flip = host_to_device(p.flip, device)
    factors = host_to_device(p.factors, device)
    sigma = host_to_device(p.sigma, device)
    mean, std = _normaliser(device)
    kernel = blur_kernel_size(image_size)
    chunk = max(1, chunk_elements(device) // (3 * image_size * image_size))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        flat, bounds = p.groups(a, b)
        groups = host_to_device(flat, device)
        x = resized_crop(src, sample[a:b], boxes[a:b], flip[a:b], image_size)
        f = factors[a:b]
        for g, (lo, hi) in enumerate(bounds[:16]):  # jitter: slot-major, then op
            if hi > lo:
                idx, op_id = groups[lo:hi], g % 4
                x[idx] = _JITTER_OPS[op_id](x[idx], f[idx, op_id])
        lo, hi = bounds[16]
        if hi > lo:
            idx = groups[lo:hi]
            x[idx] = _grayscale(x[idx]).expand(-1, 3, -1, -1)
        lo, hi = bounds[17]
        if hi > lo:
            idx = groups[lo:hi]
            x[idx] = _gaussian_blur(x[idx], sigma[a:b][idx], kernel)
        out[a:b] = x.sub_(mean).div_(std)
    return out


# ------------------------------------------------------------------------------------------ public


def seeded_uniforms(keys: Sequence[str], views: int, seed: int) -> np.ndarray:
    """Uniforms of view r of key k in row ``r * len(keys) + i``: a function of (seed, key, r) only."""
    return view_uniforms([view_seed(seed, str(key), r) for r in range(views) for key in keys])


def seeded_views(images: Any, keys: Sequence[str], views: int, seed: int, image_size: int) -> torch.Tensor:
    """``views`` augmented views per image, ``[views, B, 3, size, size]`` on the batch's device; view r of key k
    depends only on (seed, k, r) and the image. ``images``: an :class:`ImageBatch` or host frames.

    Torch's global RNG is neither read nor advanced, so callers' random state is untouched.
    """
    batch = as_batch(images)
    b = len(batch)
    if len(keys) != b:
        raise ValueError(f"{len(keys)} keys for {b} images")
    p = ViewParams.draw(
        seeded_uniforms(keys, views, seed), np.tile(np.arange(b), views), batch.sizes, image_size
    )
    out = torch.empty((views, b, 3, image_size, image_size), dtype=torch.float32, device=batch.device)
    render_views(batch, p, image_size, out.view(views * b, 3, image_size, image_size))
    return out


def augment_batch(images: Any, image_size: int) -> torch.Tensor:
    """One random SimCLR view per image: ``[B, 3, size, size]`` float on the batch's device. Two calls give the
    two views. Parameters come from a key drawn from torch's global RNG, so ``torch.manual_seed`` fixes them."""
    batch = as_batch(images)
    n = len(batch)
    rng = np.random.Generator(np.random.Philox(key=int(torch.randint(0, 2**62, (1,)).item())))
    p = ViewParams.draw(rng.random((n, N_UNIFORMS)), np.arange(n), batch.sizes, image_size)
    out = torch.empty((n, 3, image_size, image_size), dtype=torch.float32, device=batch.device)
    return render_views(batch, p, image_size, out)


def clean_batch(images: Any, image_size: int) -> torch.Tensor:
    """Un-augmented, normalised ``[B, 3, size, size]`` float on the batch's device: the centred square of each
    frame resized to ``size`` (bilinear, no antialias: the decoder already brought the frame's shorter side down
    to ``data.decode_size``, by default about 1.15x the size)."""
    batch = as_batch(images)
    device = batch.device
    boxes = host_to_device(centre_boxes(batch.sizes), device)
    sample = torch.arange(len(batch), device=device)
    x = resized_crop(batch.float_pixels(), sample, boxes, None, image_size)
    mean, std = _normaliser(device)
    return x.sub_(mean).div_(std)
