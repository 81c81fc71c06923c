"""A tiny stand-in for Fashion-MNIST: 10 classes of simple patterns, generated in milliseconds.

Tests and machines without the dataset still get a demo whose classes a small network can tell apart: each
class is one shape or stripe orientation, jittered in position, size and brightness, plus pixel noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "ring",
    "disk",
    "square",
    "frame",
    "triangle",
    "plus",
    "cross",
    "hstripes",
    "vstripes",
    "dots",
)

_SUPER = 4  # draw at 4x and downsample: smoother edges at 16 px


def _draw(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    s = size * _SUPER
    img = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(img)
    fg = int(rng.integers(170, 256))
    cx, cy = (s / 2 + rng.uniform(-0.1, 0.1, 2) * s).tolist()
    r = rng.uniform(0.25, 0.38) * s
    w = max(1, int(s * 0.08))
    box = [cx - r, cy - r, cx + r, cy + r]
    name = SYNTHETIC_CLASSES[cls]
    if name == "ring":
        d.ellipse(box, outline=fg, width=w)
    elif name == "disk":
        d.ellipse(box, fill=fg)
    elif name == "square":
        d.rectangle(box, fill=fg)
    elif name == "frame":
        d.rectangle(box, outline=fg, width=w)
    elif name == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif name == "plus":
        d.line([cx - r, cy, cx + r, cy], fill=fg, width=2 * w)
        d.line([cx, cy - r, cx, cy + r], fill=fg, width=2 * w)
    elif name == "cross":
        d.line([cx - r, cy - r, cx + r, cy + r], fill=fg, width=2 * w)
        d.line([cx - r, cy + r, cx + r, cy - r], fill=fg, width=2 * w)
    elif name in ("hstripes", "vstripes"):
        period = rng.uniform(0.18, 0.26) * s
        off = rng.uniform(0, period)
        k = off
        while k < s:
            if name == "hstripes":
                d.rectangle([0, k, s, k + period / 2], fill=fg)
            else:
                d.rectangle([k, 0, k + period / 2, s], fill=fg)
            k += period
    elif name == "dots":
        step = rng.uniform(0.22, 0.3) * s
        rr = step * 0.22
        for y in np.arange(rng.uniform(0, step), s, step):
            for x in np.arange(rng.uniform(0, step), s, step):
                d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fg)
    small = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)
    small += rng.normal(0, 12, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def make_synthetic(per_class: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [10*per_class, size, size], labels int64)``, class-major order; image ``(c, j)`` is
    a pure function of ``(seed, c, j)``."""
    n = per_class * len(SYNTHETIC_CLASSES)
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(SYNTHETIC_CLASSES), dtype=np.int64), per_class)
    for i in range(n):
        cls, j = int(labels[i]), i % per_class
        images[i] = _draw(cls, np.random.default_rng([seed, cls, j]), size)
    return images, labels
