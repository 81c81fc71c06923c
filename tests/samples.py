"""Generated image files, good and bad, for tests and benchmarks (no downloads needed).

:func:`bad_inputs` returns one file per awkward case that a web-scale pool contains, each paired with the
outcome the reader must produce (``None`` = decodes fine, else the failure reason).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_image(rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A smooth random colour image (blobs, not white noise, so JPEG stays small and features mean something)."""
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((size, size), Image.BILINEAR)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (a decompression-bomb header) with a tiny body."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def bad_inputs(seed: int = 0) -> dict[str, tuple[bytes, str | None]]:
    """``{file name: (bytes, expected error or None)}`` covering every case of the reliability issue."""
    rng = np.random.default_rng(seed)
    base = random_image(rng, 24)
    jpeg = encode(base, "JPEG", quality=90)
    frames = [random_image(rng, 16).convert("P") for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.new("L", base.size, 100))
    gray16 = Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100)  # mode I;16
    return {
        "zero.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "text.png": (b"<html><body>not an image</body></html>\n", "not_an_image"),
        "bomb.png": (png_header_only(20_000, 20_000), "too_many_pixels"),
        "one.png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
        "gray.png": (encode(base.convert("L"), "PNG"), None),
        "cmyk.jpg": (encode(base.convert("CMYK"), "JPEG"), None),
        "rgba.png": (encode(rgba, "PNG"), None),
        "gray16.png": (encode(gray16, "PNG"), None),
        "palette.png": (encode(base.convert("P"), "PNG"), None),
        "anim.gif": (gif.getvalue(), None),
        "wide.webp": (encode(random_image(rng, 24).resize((60, 20)), "WEBP"), None),
        "bitmap.bmp": (encode(base, "BMP"), None),
        "tiff16.tif": (encode(gray16, "TIFF"), None),
    }


def good_image_bytes(rng: np.random.Generator, fmt: str = "PNG", size: int = 24) -> bytes:
    return encode(random_image(rng, size), fmt)


def tar_of_images(rng: np.random.Generator, keys: list[str]) -> bytes:
    """A WebDataset-style tar: one good PNG per key (``<key>.png``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in keys:
            data = good_image_bytes(rng)
            info = tarfile.TarInfo(f"{k}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
