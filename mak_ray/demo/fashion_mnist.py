"""Read Fashion-MNIST from its IDX files (as Debian's ``dataset-fashion-mnist`` installs them).

The demo uses a local copy and never downloads: a missing dataset raises an error that names the Debian
package and the ``--data-dir`` option, so the fix is obvious.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"

# Folder-safe names, in label order 0..9 (the official names are T-shirt/top, Trouser, Pullover, Dress, Coat,
# Sandal, Shirt, Sneaker, Bag, Ankle boot).
CLASS_NAMES: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type codes -> numpy dtypes (big-endian where it matters)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class FashionMnistMissing(FileNotFoundError):
    """The IDX files are not where we looked."""


def _missing_message(data_dir: str, wanted: str) -> str:
    return (
        f"Fashion-MNIST file {wanted!r} (or {wanted}.gz) not found in {data_dir}. "
        f"Install the Debian package with `sudo apt-get install {DEBIAN_PACKAGE}` (it puts the files in "
        f"{DEFAULT_DATA_DIR}), or pass --data-dir pointing at a folder holding the four IDX files "
        f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
        f"gzipped or not). Use --synthetic to build the demo without it."
    )


def find_idx_file(data_dir: str | os.PathLike[str], stem: str) -> Path:
    """Path of ``stem`` or ``stem.gz`` in ``data_dir`` (also accepts the ``stem`` spelled with a dot: idx3.ubyte)."""
    base = Path(data_dir)
    candidates = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for name in candidates:
        path = base / name
        if path.is_file():
            return path
    raise FashionMnistMissing(_missing_message(str(base), stem))


def read_idx(path: str | os.PathLike[str], limit: int | None = None) -> np.ndarray:
    """Decode one IDX file (gzipped or not); ``limit`` reads only the first records."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[0] != 0 or header[1] != 0:
            raise ValueError(f"{path}: not an IDX file (bad magic {header!r})")
        dtype_code, ndim = header[2], header[3]
        if dtype_code not in _IDX_DTYPES:
            raise ValueError(f"{path}: unknown IDX type code 0x{dtype_code:02x}")
        dims = list(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
        if limit is not None:
            dims[0] = min(dims[0], int(limit))
        dtype = np.dtype(_IDX_DTYPES[dtype_code])
        count = int(np.prod(dims)) if dims else 1
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} of {count * dtype.itemsize} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def load_split(
    split: str, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of the ``train`` or ``test`` split."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    data_dir = str(data_dir or DEFAULT_DATA_DIR)
    if not Path(data_dir).is_dir():
        raise FashionMnistMissing(_missing_message(data_dir, _FILES[split][0]))
    img_stem, lab_stem = _FILES[split]
    images = read_idx(find_idx_file(data_dir, img_stem), limit)
    labels = read_idx(find_idx_file(data_dir, lab_stem), limit).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{data_dir}: {split} images {images.shape} do not match labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f"{data_dir}: {split} labels outside 0..{len(CLASS_NAMES) - 1}")
    return images.astype(np.uint8, copy=False), labels
