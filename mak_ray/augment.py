"""SimCLR augmentations (torchvision.transforms.v2), shared by training and scoring.

Images arrive as decoded RGB uint8 numpy arrays ``[S, S, 3]`` (batches ``[B, S, S, 3]``), already resized to
``data.image_size`` by the reader. v2 transforms draw one set of random parameters per call, so a batch is
augmented image by image: every image gets its own crop, flip and jitter, as SimCLR requires.

:func:`seeded_views` makes view ``r`` of the sample with key ``k`` a function of ``(seed, k, r)`` alone, so
scores (ECLE) computed from augmented views are reproducible whatever the batching or worker layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2

# ImageNet statistics: a fixed normalisation, so every stage feeds the model the same input scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_BLUR_MIN_SIZE = 64  # blur only helps (and is only used by SimCLR) on larger images; at 32 px it destroys them


def _to_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def simclr_transform(image_size: int) -> v2.Transform:
    """The SimCLR augmentation on one uint8 CHW tensor; output is float32, normalised, ``[3, size, size]``."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if image_size > _BLUR_MIN_SIZE:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # ~10% of the side, odd
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
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


def augment_batch(images: np.ndarray, image_size: int) -> torch.Tensor:
    """One random SimCLR view per image: ``[B, 3, size, size]`` float. Two calls give the two views."""
    batch = _as_chw_batch(images)
    t = simclr_transform(image_size)
    return torch.stack([t(img) for img in batch])


def view_seed(seed: int, key: str, view: int) -> int:
    """A 63-bit RNG seed for view ``view`` of sample ``key``: stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{key}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_views(
    images: np.ndarray, keys: Sequence[str], views: int, seed: int, image_size: int
) -> torch.Tensor:
    """``views`` augmented views per image, ``[views, B, 3, size, size]``; view r of key k depends only on (seed, k, r).

    The global torch RNG is forked, so callers' random state is untouched.
    """
    batch = _as_chw_batch(images)
    if len(keys) != batch.shape[0]:
        raise ValueError(f"{len(keys)} keys for {batch.shape[0]} images")
    t = simclr_transform(image_size)
    out = torch.empty((views, batch.shape[0], 3, image_size, image_size), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        for i, (img, key) in enumerate(zip(batch, keys)):
            for r in range(views):
                torch.manual_seed(view_seed(seed, str(key), r))
                out[r, i] = t(img)
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
