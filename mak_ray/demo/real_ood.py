"""Real near-out-of-distribution images from files that scikit-learn and scikit-image ship in their wheels.

Generated junk (``ood.py``) is far from the target and easy to reject; a real pool's junk looks like the target.
These kinds are real images converted to Fashion-MNIST's look (grayscale, one object bright on a dark
background, centred in the frame), so they are the hard case for proximity:

- ``ood-digits``: scikit-learn's handwritten digits (1,797 images, 8x8), upscaled, shifted and rotated;
- ``ood-faces``: the 100 faces of scikit-image's ``lfw_subset`` (25x25) under a soft oval mask, cropped and flipped;
- ``ood-objects``: crops of the photographs bundled with both packages, thresholded (Otsu) into the crop's
  largest bright or dark region, which is kept with its texture on black, like a garment silhouette.

Every source file is read from the installed package (never downloaded): the loaders open the files by path
and do not go through ``skimage.data``'s fetcher. Image ``i`` depends only on ``(seed, i)``, through the
generator ``ood.make_ood_images`` gives it. The packages are the ``demo`` extra; without them these kinds
raise an ImportError that says so.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

REAL_OOD_KINDS: tuple[str, ...] = ("ood-digits", "ood-faces", "ood-objects")

# grayscale or RGB photographs inside scikit-image's wheel (skimage/data/), readable without a download
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "rocket.jpg",
    "clock_motion.png",
    "moon.png",
    "motorcycle_left.png",
)
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")

_EXTRA = "scikit-learn and scikit-image (pip install 'mak-ray[demo]')"


def _package_file(package: str, name: str) -> Path:
    """``name`` inside the installed ``package`` (dotted), found without importing it.

    The top-level package is only located (``find_spec``), never imported: importing scikit-learn alone costs
    seconds, and the files are plain data.
    """
    top, *sub = package.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"real OOD images need {_EXTRA}: {top} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *sub, name)
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not inside the installed {package} package")
    return path


@functools.lru_cache(maxsize=1)
def digit_images() -> np.ndarray:
    """scikit-learn's digits as float32 [1797, 8, 8] in [0, 1], read from the CSV its wheel ships (64 pixel
    values in 0..16 and the digit per row)."""
    with gzip.open(_package_file("sklearn.datasets.data", "digits.csv.gz"), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (data[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def face_images() -> np.ndarray:
    """The faces of scikit-image's ``lfw_subset`` as float32 [100, 25, 25] in [0, 1], from the wheel's .npy file.

    The file holds 100 faces followed by 100 non-face patches; only the faces are kept.
    """
    with _package_file("skimage.data", "lfw_subset.npy").open("rb") as f:
        return np.load(f)[:100].astype(np.float32)


@functools.lru_cache(maxsize=1)
def photo_images() -> tuple[np.ndarray, ...]:
    """The bundled photographs as grayscale float32 arrays in [0, 1] (various sizes)."""
    files = [("skimage.data", n) for n in _SKIMAGE_PHOTOS] + [
        ("sklearn.datasets.images", n) for n in _SKLEARN_PHOTOS
    ]
    out = []
    for package, name in files:
        with _package_file(package, name).open("rb") as f:
            img = Image.open(f).convert("L")
            out.append(np.asarray(img, dtype=np.float32) / 255.0)
    return tuple(out)


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic resize of a float image in [0, 1] (PIL's float mode), clipped back to [0, 1]."""
    img = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32), mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def _place(obj: np.ndarray, size: int, rng: np.random.Generator, jitter: int) -> np.ndarray:
    """Paste ``obj`` (float, [h, w] <= size) on a black ``size`` canvas, centred up to ``jitter`` px off."""
    h, w = obj.shape
    top = (size - h) // 2 + int(rng.integers(-jitter, jitter + 1))
    left = (size - w) // 2 + int(rng.integers(-jitter, jitter + 1))
    top, left = int(np.clip(top, 0, size - h)), int(np.clip(left, 0, size - w))
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top : top + h, left : left + w] = obj
    return canvas


def _to_uint8(x: np.ndarray, peak: float) -> np.ndarray:
    return np.clip(x * peak, 0, 255).astype(np.uint8)


def digits(rng: np.random.Generator, size: int) -> np.ndarray:
    """One handwritten digit, bright on black: upscaled to 55-85% of the frame, rotated up to 15 degrees."""
    src = digit_images()
    d = src[int(rng.integers(len(src)))]
    side = max(4, int(round(size * rng.uniform(0.55, 0.85))))
    obj = _resize(d, side, side)
    angle = float(rng.uniform(-15, 15))
    obj = np.asarray(Image.fromarray(obj, mode="F").rotate(angle, Image.BILINEAR), dtype=np.float32)
    return _to_uint8(_place(obj, size, rng, jitter=max(1, size // 10)), rng.uniform(170, 255))


def faces(rng: np.random.Generator, size: int) -> np.ndarray:
    """One face under a soft oval mask on black: a random crop (70-100%), resized to 70-95% of the frame."""
    src = face_images()
    f = src[int(rng.integers(len(src)))]
    n = f.shape[0]
    c = int(round(n * rng.uniform(0.7, 1.0)))
    top, left = int(rng.integers(0, n - c + 1)), int(rng.integers(0, n - c + 1))
    crop = f[top : top + c, left : left + c]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    side = max(4, int(round(size * rng.uniform(0.7, 0.95))))
    obj = _resize(crop, side, side)
    obj = obj / max(float(obj.max()), 1e-6)
    yy, xx = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side - 0.5
    ry, rx = rng.uniform(0.42, 0.5), rng.uniform(0.32, 0.42)
    r = np.sqrt((yy / ry) ** 2 + (xx / rx) ** 2)
    mask = np.clip((1.0 - r) / 0.15, 0.0, 1.0)  # 1 inside the oval, a soft edge, 0 outside
    return _to_uint8(_place(obj * mask, size, rng, jitter=max(1, size // 14)), rng.uniform(200, 255))


def _otsu(x: np.ndarray) -> float:
    """Otsu's threshold of a float image in [0, 1] (64 bins)."""
    hist, edges = np.histogram(x, bins=64, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * mids)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = -1.0
    return float(mids[int(np.argmax(between))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def objects(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo crop's largest Otsu region (bright or dark side, at random), kept with its texture on black.

    The crop (a random square of 10-45% of the photo's short side) is shrunk to ~85% of the frame before
    thresholding, so the silhouette has the blocky scale of a Fashion-MNIST garment. Crops whose region covers
    under 15% or over 85% of the crop are redrawn (up to 20 tries), so each image holds one object-like blob.
    """
    photos = photo_images()
    inner = max(4, int(round(size * 0.86)))
    for _ in range(20):
        p = photos[int(rng.integers(len(photos)))]
        short = min(p.shape)
        c = int(round(short * rng.uniform(0.10, 0.45)))
        top, left = int(rng.integers(0, p.shape[0] - c + 1)), int(rng.integers(0, p.shape[1] - c + 1))
        crop = _resize(p[top : top + c, left : left + c], inner, inner)
        if crop.std() < 0.04:
            continue
        fg = crop > _otsu(crop)
        if rng.random() < 0.5:
            fg = ~fg
            crop = 1.0 - crop  # the kept region is made the bright side
        fg = _largest_component(fg)
        if 0.15 <= fg.mean() <= 0.85:
            break
    obj = crop * fg
    if obj.max() > 0:
        obj = obj / obj.max()
    return _to_uint8(_place(obj, size, rng, jitter=1), rng.uniform(190, 255))


GENERATORS = {"ood-digits": digits, "ood-faces": faces, "ood-objects": objects}
