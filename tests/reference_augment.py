"""Reference augmentations for tests and benchmarks (no library code imports this module).

- :func:`simclr_transform` / :func:`clean_transform`: the SimCLR and evaluation pipelines as per-image torchvision
  v2 transforms, the definition the batched library implementation follows.
- :func:`seeded_views`, :func:`augment_batch`, :func:`clean_batch`: the batched CPU implementation that
  ``mak_ray.augment``'s device path replaced, kept verbatim as the oracle. It takes square ``[B, S, S, 3]`` frames
  (the reader squashed every image to ``image_size``); on such frames at ``image_size`` the device path must give
  bit-identical views.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2

# ImageNet statistics: a fixed normalisation, so every stage feeds the model the same input scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# blur only helps (and is only used by SimCLR) on larger images; at 32 px it destroys them
_BLUR_MIN_SIZE = 64

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
_U_CROP = 0  # CROP_ATTEMPTS x (scale, log-ratio, top, left)
_U_FLIP = _U_CROP + 4 * CROP_ATTEMPTS
_U_JITTER = _U_FLIP + 1
_U_FACTORS = _U_JITTER + 1  # brightness, contrast, saturation, hue
_U_ORDER = _U_FACTORS + 4  # argsort of 4 uniforms = a uniform random permutation of the jitter ops
_U_GRAY = _U_ORDER + 4
_U_BLUR = _U_GRAY + 1
_U_SIGMA = _U_BLUR + 1
N_UNIFORMS = _U_SIGMA + 1

# items per chunk: a chunk's float tensor stays ~16 MB, so the ops' temporaries stay small
_CHUNK_ELEMENTS = 1 << 22
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def blur_kernel_size(image_size: int) -> int:
    """Blur kernel side: ~10% of the image side, odd, at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def _to_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def simclr_transform(image_size: int) -> v2.Transform:
    """The SimCLR augmentation on one uint8 CHW tensor (torchvision, per image); float32 normalised ``[3, S, S]``.

    The batched functions below implement the same distribution; this stays as the reference pipeline.
    """
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(image_size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
        v2.RandomHorizontalFlip(FLIP_P),
        v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAY_P),
    ]
    if image_size > _BLUR_MIN_SIZE:
        steps.append(
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(image_size), sigma=BLUR_SIGMA)], p=BLUR_P)
        )
    return v2.Compose(steps + _to_float())


def clean_transform(image_size: int) -> v2.Transform:
    """No augmentation: resize only if needed, then float + normalise (for embeddings and evaluation)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *_to_float()])


def _as_chw_batch(images: np.ndarray) -> torch.Tensor:
    """Validate a uint8 ``[B, S, S, 3]`` array and view it as a ``[B, 3, S, S]`` tensor (no copy if possible)."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        raise ValueError(f"expected uint8 images [B, S, S, 3], got {type(images).__name__} shape {shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {images.dtype}")
    if not images.flags.writeable:  # Ray/Arrow buffers are read-only; torch wants a writable base
        images = images.copy()
    return torch.from_numpy(images).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ parameters


def view_seed(seed: int, key: str, view: int) -> int:
    """A 63-bit RNG seed for view ``view`` of sample ``key``: stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{key}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def view_uniforms(seeds: Sequence[int]) -> np.ndarray:
    """``[len(seeds), N_UNIFORMS]`` uniforms in [0, 1), row i from a Philox stream keyed by ``seeds[i]`` alone."""
    out = np.empty((len(seeds), N_UNIFORMS), dtype=np.float64)
    for i, s in enumerate(seeds):
        out[i] = np.random.Generator(np.random.Philox(key=s)).random(N_UNIFORMS)
    return out


def crop_boxes(u: np.ndarray, height: int, width: int) -> np.ndarray:
    """RandomResizedCrop boxes ``[N, 4]`` int64 (top, left, h, w) from the crop columns of ``u``.

    torchvision's sampler, vectorised: up to CROP_ATTEMPTS (area fraction, log aspect ratio) draws, the first box
    that fits wins, and if none fits, the centre crop clamped to the ratio range.
    """
    n = u.shape[0]
    att = u[:, _U_CROP : _U_CROP + 4 * CROP_ATTEMPTS].reshape(n, CROP_ATTEMPTS, 4)
    area = height * width
    target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * att[..., 0])
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = np.exp(lo + (hi - lo) * att[..., 1])
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, like Python's round()
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    top = np.floor(att[rows, first, 2] * (height - h + 1)).astype(np.int64)  # randint(0, height - h + 1)
    left = np.floor(att[rows, first, 3] * (width - w + 1)).astype(np.int64)

    in_ratio = width / height  # fallback: centre crop
    if in_ratio < CROP_RATIO[0]:
        fw, fh = width, int(round(width / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        fw, fh = int(round(height * CROP_RATIO[1])), height
    else:
        fw, fh = width, height
    miss = ~ok.any(axis=1)
    h[miss], w[miss] = fh, fw
    top[miss], left[miss] = (height - fh) // 2, (width - fw) // 2
    return np.stack([top, left, h, w], axis=1)


class _Params:
    """Per-item augmentation parameters as tensors, sliceable by item range."""

    def __init__(self, u: np.ndarray, height: int, width: int, image_size: int) -> None:
        self.boxes = torch.from_numpy(crop_boxes(u, height, width))
        self.flip = torch.from_numpy(u[:, _U_FLIP] < FLIP_P)
        self.jitter = torch.from_numpy(u[:, _U_JITTER] < JITTER_P)
        f = u[:, _U_FACTORS : _U_FACTORS + 4]
        b, c, s, h = JITTER
        self.factors = torch.from_numpy(
            np.stack(
                [
                    1 - b + 2 * b * f[:, 0],
                    1 - c + 2 * c * f[:, 1],
                    1 - s + 2 * s * f[:, 2],
                    -h + 2 * h * f[:, 3],
                ],
                1,
            )
        ).to(torch.float32)
        self.order = torch.from_numpy(np.argsort(u[:, _U_ORDER : _U_ORDER + 4], axis=1, kind="stable"))
        self.gray = torch.from_numpy(u[:, _U_GRAY] < GRAY_P)
        self.blur = torch.from_numpy(u[:, _U_BLUR] < BLUR_P) & (image_size > _BLUR_MIN_SIZE)
        self.sigma = torch.from_numpy(BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, _U_SIGMA])


# ------------------------------------------------------------------------------------------ ops


def _bilinear_taps(
    start: torch.Tensor, length: torch.Tensor, out_size: int, flip: torch.Tensor | None = None
):
    """Source indices (i0, i1) and weight of i1 for resizing [start, start+length) to ``out_size`` pixels.

    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` along one axis: source coordinate
    ``(d + 0.5) * length / out - 0.5`` clamped at 0, upper neighbour clamped at the crop's last pixel, identity when
    the length already matches. ``flip`` reverses the output order (horizontal flip after the resize).
    """
    d = torch.arange(out_size, dtype=torch.float32)
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


def _resized_crop(
    images: torch.Tensor, sample: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int
):
    """Crop ``boxes`` (top, left, h, w) of ``images[sample]`` and resize to ``size`` (bilinear), flipping where asked."""
    _, c, height, width = images.shape
    n = sample.shape[0]
    y0, y1, ly = _bilinear_taps(boxes[:, 0], boxes[:, 2], size)
    x0, x1, lx = _bilinear_taps(boxes[:, 1], boxes[:, 3], size, flip)
    rows = images.reshape(-1, width)  # [B*C*H, W]
    base = (sample[:, None] * c + torch.arange(c)[None, :]) * height  # [n, C]: first row of each image plane
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
    minc, maxc = image.amin(dim=-3), image.amax(dim=-3)  # aminmax over channels is ~10x slower on CPU
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


def _color_jitter(
    x: torch.Tensor, on: torch.Tensor, factors: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """ColorJitter on the items where ``on``: slot k applies op ``order[i, k]`` to item i, as torchvision's randperm."""
    for slot in range(4):
        for op_id, op in enumerate(_JITTER_OPS):
            idx = torch.nonzero(on & (order[:, slot] == op_id)).view(-1)
            if idx.numel():
                x[idx] = op(x[idx], factors[idx, op_id])
    return x


def _reflect_blur_matrices(sigma: torch.Tensor, size: int, kernel: int) -> torch.Tensor:
    """``[n, size, size]`` matrices M with ``row @ M`` = 1-D Gaussian blur of ``row``, reflect padding folded in.

    Gaussian taps as ``F.gaussian_blur`` builds them; a banded matmul is ~7x faster here than a grouped conv.
    """
    radius = kernel // 2
    t = torch.arange(kernel, dtype=torch.float32) - radius
    taps = torch.softmax(-(t[None, :] ** 2) / (2 * sigma.to(torch.float32)[:, None] ** 2), dim=1)  # [n, k]
    out_idx = torch.arange(size)
    src = out_idx[None, :] + t.to(torch.int64)[:, None]  # [k, size]
    src = src.abs()
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)
    m = torch.zeros(sigma.shape[0], size, size, dtype=torch.float32)
    for j in range(kernel):  # taps that reflect onto the same source pixel add up
        m.index_put_(
            (
                torch.arange(sigma.shape[0])[:, None],
                src[j][None, :].expand(sigma.shape[0], size),
                out_idx[None, :],
            ),
            taps[:, j : j + 1].expand(-1, size),
            accumulate=True,
        )
    return m


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of square ``x`` ``[n, 3, S, S]`` with one sigma per image (reflect padding)."""
    m = _reflect_blur_matrices(sigma, x.shape[-1], kernel).unsqueeze(1)  # [n, 1, S, S]
    return torch.matmul(m.transpose(-1, -2), torch.matmul(x, m))


def _augment_items(
    images: torch.Tensor, sample: np.ndarray, u: np.ndarray, image_size: int, out: torch.Tensor
) -> torch.Tensor:
    """Write into ``out`` ``[N, 3, S, S]`` item n = SimCLR view of ``images[sample[n]]`` under uniforms ``u[n]``."""
    _, _, height, width = images.shape
    p = _Params(u, height, width, image_size)
    src = images.to(torch.float32).div_(255.0)
    sample_t = torch.from_numpy(np.asarray(sample, dtype=np.int64))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    kernel = blur_kernel_size(image_size)
    chunk = max(1, _CHUNK_ELEMENTS // (3 * image_size * image_size))
    for a in range(0, len(sample_t), chunk):
        s = slice(a, a + chunk)
        x = _resized_crop(src, sample_t[s], p.boxes[s], p.flip[s], image_size)
        x = _color_jitter(x, p.jitter[s], p.factors[s], p.order[s])
        gray = torch.nonzero(p.gray[s]).view(-1)
        if gray.numel():
            x[gray] = _grayscale(x[gray]).expand(-1, 3, -1, -1)
        blur = torch.nonzero(p.blur[s]).view(-1)
        if blur.numel():
            x[blur] = _gaussian_blur(x[blur], p.sigma[s][blur], kernel)
        out[s] = x.sub_(mean).div_(std)
    return out


# ------------------------------------------------------------------------------------------ public


def augment_batch(images: np.ndarray, image_size: int) -> torch.Tensor:
    """One random SimCLR view per image: ``[B, 3, size, size]`` float. Two calls give the two views.

    Parameters come from a generator seeded from torch's global RNG, so ``torch.manual_seed`` fixes them.
    """
    batch = _as_chw_batch(images)
    n = batch.shape[0]
    rng = np.random.Generator(np.random.Philox(key=int(torch.randint(0, 2**62, (1,)).item())))
    out = torch.empty((n, 3, image_size, image_size), dtype=torch.float32)
    return _augment_items(batch, np.arange(n), rng.random((n, N_UNIFORMS)), image_size, out)


def seeded_views(
    images: np.ndarray, keys: Sequence[str], views: int, seed: int, image_size: int
) -> torch.Tensor:
    """``views`` augmented views per image, ``[views, B, 3, size, size]``; view r of key k depends only on (seed, k, r).

    Torch's global RNG is neither read nor advanced, so callers' random state is untouched.
    """
    batch = _as_chw_batch(images)
    b = batch.shape[0]
    if len(keys) != b:
        raise ValueError(f"{len(keys)} keys for {b} images")
    seeds = [view_seed(seed, str(key), r) for r in range(views) for key in keys]  # item r*B + i
    out = torch.empty((views, b, 3, image_size, image_size), dtype=torch.float32)
    sample = np.tile(np.arange(b), views)
    _augment_items(
        batch, sample, view_uniforms(seeds), image_size, out.view(views * b, 3, image_size, image_size)
    )
    return out


def clean_batch(images: np.ndarray, image_size: int) -> torch.Tensor:
    """Un-augmented, normalised ``[B, 3, size, size]`` float tensor."""
    batch = _as_chw_batch(images)
    if batch.shape[-2:] != (image_size, image_size):
        batch = v2.functional.resize(batch, [image_size, image_size], antialias=True)
    x = batch.to(torch.float32).div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std
