"""Generated web-like JPEGs for the scoring benchmarks (no downloads): smooth colour fields with texture noise,
so that a file's size and decode cost are those of a photo of the same size rather than of a flat or a white-noise
image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Colour blobs (a small random image upsampled) plus Gaussian texture noise."""
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
    noise = rng.normal(0.0, 10.0, size=(height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def jpeg_files(n: int, width: int = 500, height: int = 375, seed: int = 0, quality: int = 85) -> list[bytes]:
    """``n`` JPEGs of ``width`` x ``height``; every fourth one is portrait (height x width), as in a web pool."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (height, width) if i % 4 == 3 else (width, height)
        buf = io.BytesIO()
        photo_like(rng, w, h).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
