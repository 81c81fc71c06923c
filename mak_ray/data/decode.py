"""Bytes -> RGB uint8 array, with a reason instead of an exception for every bad input.

Web-scale pools hold zero-byte files, truncated JPEGs, HTML saved as ``.png``, decompression bombs and
every colour mode Pillow knows. One such file must never stop a job, so the decoders return
``(array, None)`` or ``(None, reason)``; the reader writes the reason into the row's ``error`` column.

Two output shapes:

- :func:`decode_frame`: the source frame the augmentation crops from. The aspect ratio is kept, the shorter
  side is resized to at most ``decode_size`` (``data.decode_size``, default :func:`default_decode_size`, about
  1.15x the model's input side, so a crop is rarely downscaled by more than that), smaller images are kept as
  they are. An image more elongated than ``MAX_ASPECT`` : 1 keeps only its centred ``MAX_ASPECT`` : 1 part: in a
  banner or panorama RandomResizedCrop's ratio range lets only boxes of a small share of the area fit, so most
  of its scale draws are rejected and its crops no longer span (0.08, 1) of the image; and a row's size would
  be unbounded.
- :func:`decode_image`: a square ``[size, size, 3]`` (shorter side resized to ``size``, centre crop).

Reasons: ``empty``, ``not_an_image``, ``corrupt`` (including truncated data), ``too_many_pixels``.
A 1x1 image is valid.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_MANY_PIXELS = "too_many_pixels"
EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the stored pixels are rotated or mirrored

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# a frame's longer side is at most this many times its shorter side (the rest is cropped, centred)
MAX_ASPECT = 2.0
# data.decode_size default, relative to data.image_size: the standard evaluation resize (256 for 224)
DECODE_SCALE = 1.15

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image


def default_decode_size(image_size: int) -> int:
    """``data.decode_size`` when unset: ``ceil(1.15 * image_size)``."""
    return math.ceil(DECODE_SCALE * image_size)


def max_frame_pixels(decode_size: int) -> int:
    """The most pixels a frame from :func:`decode_frame` can hold (to size read batches)."""
    return decode_size * math.floor(MAX_ASPECT * decode_size)


def frame_size(
    width: int, height: int, decode_size: int
) -> tuple[tuple[float, float, float, float], int, int]:
    """Where a ``width`` x ``height`` image's frame comes from and how big it is: the source box
    (left, top, right, bottom) after the aspect cap, and the output width and height."""
    short = min(width, height)
    long_cap = min(max(width, height), math.floor(MAX_ASPECT * short))
    bw, bh = (long_cap, short) if width >= height else (short, long_cap)
    left, top = (width - bw) / 2.0, (height - bh) / 2.0
    if short <= decode_size:
        left, top = float(int(left)), float(int(top))  # kept at full resolution: crop on whole pixels
        return (left, top, left + bw, top + bh), bw, bh
    scale = decode_size / short
    out_long = min(round(long_cap * scale), math.floor(MAX_ASPECT * decode_size))
    ow, oh = (out_long, decode_size) if width >= height else (decode_size, out_long)
    return (left, top, left + bw, top + bh), ow, oh


def decode_frame(data: bytes, decode_size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """Decode ``data`` to a ``[h, w, 3]`` uint8 RGB frame: aspect kept (up to ``MAX_ASPECT``), shorter side
    ``min(its own, decode_size)``; JPEGs are decoded at the smallest DCT scale that still covers it."""
    return _decode(data, max_pixels, decode_size, lambda img: _frame(img, decode_size))


def decode_image(data: bytes, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """Decode ``data`` to ``[size, size, 3]`` uint8 RGB (shorter side resized to ``size``, centre crop)."""
    return _decode(data, max_pixels, size, lambda img: _fit(img, size))


def _decode(
    data: bytes, max_pixels: int, draft: int, shape: Callable[[Image.Image], np.ndarray]
) -> tuple[np.ndarray | None, str | None]:
    """Open, check and decode ``data``, then ``shape`` the RGB image; any failure becomes its reason.

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
                img.draft(img.mode, (draft, draft))
            img.load()  # first frame of GIF/APNG/TIFF; raises on truncated data
            return shape(_to_rgb(_upright(img))), None
    except Image.DecompressionBombError:
        return None, TOO_MANY_PIXELS
    except UnidentifiedImageError:
        return None, NOT_AN_IMAGE
    except Exception:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, struct.error, ...) is a bad row
        return None, CORRUPT


def _upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a camera's EXIF orientation (rotated or mirrored storage) applied."""
    if img.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
        return img
    return ImageOps.exif_transpose(img)


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


def _frame(img: Image.Image, decode_size: int) -> np.ndarray:
    """Aspect cap and shorter side to at most ``decode_size``, in one resample over the source box (none when
    the image is kept at its own resolution)."""
    box, ow, oh = frame_size(img.width, img.height, decode_size)
    if (ow, oh) == (round(box[2] - box[0]), round(box[3] - box[1])):
        out = (
            img if box == (0.0, 0.0, float(img.width), float(img.height)) else img.crop(tuple(map(int, box)))
        )
    else:
        out = img.resize((ow, oh), Image.BILINEAR, box=box)
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (oh, ow, 3):  # defensive: Pillow returned an unexpected layout
        raise ValueError(f"decoded shape {arr.shape}")
    return arr


def frames_column(frames: Sequence[np.ndarray]) -> Any:
    """The ``image`` column of a read batch as an Arrow array: a fixed-shape tensor column when every frame has
    one size (square datasets: the layout of a ``[B, S, S, 3]`` array), else a variable-shaped one. Ray Data
    joins both kinds in one dataset and gives a batch back as an array or an object array of frames."""
    from ray.data.extensions import ArrowTensorArray

    if len({f.shape for f in frames}) <= 1:
        stacked = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), dtype=np.uint8)
        return ArrowTensorArray.from_numpy(stacked)
    ragged = np.empty(len(frames), dtype=object)
    ragged[:] = list(frames)
    return ArrowTensorArray.from_numpy(ragged)
