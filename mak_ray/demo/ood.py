"""Out-of-distribution images made on the spot (nothing downloaded): textures, noise and geometric shapes.

They play the open world's junk: images that share the pool with the real classes but belong to none of them.
Three kinds, labelled for reports only: ``ood-texture`` (multi-octave value noise mixed with sinusoidal
gratings, a cheap stand-in for Perlin noise), ``ood-noise`` (uniform or Gaussian pixel noise) and
``ood-shapes`` (random circles, rectangles and lines). Everything is seeded.

``make_ood_images`` also makes the real near-OOD kinds of ``real_ood`` (``ood-digits``, ``ood-faces``,
``ood-objects``: real images in the target's look), alone or mixed with the generated ones.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mak_ray.demo.real_ood import GENERATORS as REAL_GENERATORS
from mak_ray.demo.real_ood import REAL_OOD_KINDS

OOD_KINDS: tuple[str, ...] = ("ood-texture", "ood-noise", "ood-shapes")
ALL_OOD_KINDS: tuple[str, ...] = OOD_KINDS + REAL_OOD_KINDS


def _to_uint8(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-8:
        return np.full(x.shape, int(np.clip(lo, 0, 1) * 255), dtype=np.uint8)
    return np.clip((x - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A coarse random grid upsampled bicubically: smooth blobs at one scale (one octave)."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fractal value noise (3 octaves) blended with one or two oriented sinusoidal gratings."""
    out = np.zeros((size, size), dtype=np.float32)
    amp, total = 1.0, 0.0
    for octave in range(3):
        out += amp * _value_noise(rng, size, cells=2 * 2**octave)
        total += amp
        amp *= 0.5
    out /= total
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(int(rng.integers(1, 3))):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 8)
        phase = rng.uniform(0, 2 * np.pi)
        out += rng.uniform(0.2, 0.6) * np.sin(
            2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase
        )
    return _to_uint8(out)


def noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uniform or Gaussian pixel noise with a random brightness and contrast."""
    if rng.random() < 0.5:
        lo = rng.uniform(0, 128)
        img = rng.uniform(lo, rng.uniform(lo + 64, 255), (size, size))
    else:
        img = rng.normal(rng.uniform(64, 192), rng.uniform(20, 80), (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    """2-6 random circles, rectangles and lines on a random flat background."""
    img = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        kind = int(rng.integers(0, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1, 1.1, 4) * size)
        box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
        shade = int(rng.integers(0, 256))
        if kind == 0:
            draw.ellipse(box, fill=shade if rng.random() < 0.5 else None, outline=shade)
        elif kind == 1:
            draw.rectangle(box, fill=shade if rng.random() < 0.5 else None, outline=shade)
        else:
            draw.line([x0, y0, x1, y1], fill=shade, width=int(rng.integers(1, max(2, size // 8))))
    return np.asarray(img, dtype=np.uint8)


_GENERATORS = {"ood-texture": texture, "ood-noise": noise, "ood-shapes": shapes, **REAL_GENERATORS}


def kind_schedule(n: int, kinds: tuple[str, ...], weights: tuple[int, ...] | None = None) -> list[str]:
    """The kind of each of ``n`` images: ``kinds`` interleaved in proportion to ``weights`` (default even).

    Smooth weighted round-robin: each kind's count in any prefix is within one of its weighted share, so the
    kind of image ``i`` does not depend on ``n``; with even weights it is ``kinds[i % len(kinds)]``.
    """
    weights = tuple(weights) if weights is not None else (1,) * len(kinds)
    if len(weights) != len(kinds):
        raise ValueError(f"{len(kinds)} OOD kinds but {len(weights)} weights")
    if any(int(w) != w or w < 1 for w in weights):
        raise ValueError(f"OOD kind weights must be positive integers, got {weights}")
    total = sum(weights)
    current = [0] * len(kinds)
    out: list[str] = []
    for _ in range(n):
        current = [c + w for c, w in zip(current, weights)]
        k = max(range(len(kinds)), key=lambda j: (current[j], -j))
        current[k] -= total
        out.append(kinds[k])
    return out


def make_ood_images(
    n: int,
    size: int = 28,
    seed: int = 0,
    channels: int = 1,
    kinds: tuple[str, ...] = OOD_KINDS,
    weights: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``n`` images ``uint8 [n, size, size]`` (or ``[..., 3]`` with ``channels=3``) and their kind labels.

    ``kinds`` are names from ``ALL_OOD_KINDS``, interleaved in proportion to ``weights`` (positive integers,
    one per kind; default even: :func:`kind_schedule`); image ``i`` depends only on ``(seed, i)``, the kinds and
    the weights. Generated kinds draw each channel apart; real kinds are grayscale, repeated over the channels.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    unknown = [k for k in kinds if k not in _GENERATORS]
    if unknown or not kinds:
        raise ValueError(f"unknown OOD kinds {unknown or kinds!r}; choose from {ALL_OOD_KINDS}")
    schedule = kind_schedule(n, tuple(kinds), weights)
    shape = (n, size, size) if channels == 1 else (n, size, size, 3)
    images = np.zeros(shape, dtype=np.uint8)
    for i, kind in enumerate(schedule):
        rng = np.random.default_rng([seed, i])
        if channels == 1:
            images[i] = _GENERATORS[kind](rng, size)
        elif kind in REAL_GENERATORS:
            images[i] = _GENERATORS[kind](rng, size)[..., None]
        else:
            for ch in range(3):
                images[i, ..., ch] = _GENERATORS[kind](rng, size)
    return images, schedule
