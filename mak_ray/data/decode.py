"""Bytes -> fixed-size RGB uint8 array, with a reason instead of an exception for every bad input.

Web-scale pools hold zero-byte files, truncated JPEGs, HTML saved as ``.png``, decompression bombs and
every colour mode Pillow knows. One such file must never stop a job, so :func:`decode_image` returns
``(array, None)`` or ``(None, reason)``; the reader writes the reason into the row's ``error`` column.

Reasons: ``empty``, ``not_an_image``, ``corrupt`` (including truncated data), ``too_many_pixels``.
A 1x1 image is valid: it is upscaled like any other small image.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_MANY_PIXELS = "too_many_pixels"

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image


def decode_image(data: bytes, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """Decode ``data`` to ``[size, size, 3]`` uint8 RGB (shorter side resized to ``size``, centre crop).

    The pixel count is checked from the header before any pixel is decoded, so a bomb costs a header read.
    """
    if not data:
        return None, EMPTY
    # Pillow's own guard raises at 2x MAX_IMAGE_PIXELS; keep it no stricter than ours so ours decides.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                return None, CORRUPT
            if width * height > max_pixels:
                return None, TOO_MANY_PIXELS
            if img.format == "JPEG":  # DCT-domain downscale: decode only as many pixels as the output needs
                img.draft(img.mode, (size, size))
            img.load()  # first frame of GIF/APNG/TIFF; raises on truncated data
            rgb = _to_rgb(img)
            return _fit(rgb, size), None
    except Image.DecompressionBombError:
        return None, TOO_MANY_PIXELS
    except UnidentifiedImageError:
        return None, NOT_AN_IMAGE
    except Exception:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, struct.error, ...) is a bad row
        return None, CORRUPT


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16/32-bit scaled to 8 bits, CMYK/P/L converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _HIGH_BIT_MODES:
        arr = np.asarray(img)
        if arr.dtype.kind == "f":
            hi = float(np.nanmax(arr)) if arr.size else 0.0
            arr = np.nan_to_num(arr) * (255.0 if hi <= 1.0 else 1.0)
        elif mode.startswith("I;16") or int(arr.max(initial=0)) > 255:
            arr = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    if mode == "P" and "transparency" in img.info or mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _fit(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop, in one resample over the crop box."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # defensive: Pillow returned an unexpected layout
        raise ValueError(f"decoded shape {arr.shape}")
    return arr
