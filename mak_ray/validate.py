"""Input checks shared by the selection functions.

Selection runs on numbers produced far upstream (models, Parquet files, other
machines).  A NaN or a zero vector there would silently corrupt the picks, so
every public entry point validates its inputs and fails with a message that
names the argument and the problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_float_array(name: str, x: Any, ndim: int) -> np.ndarray:
    """Return ``x`` as a float32/float64 ndarray with ``ndim`` dims, finite values.

    float16 and integer inputs are upcast to float32; float64 stays float64 so
    callers that need exact arithmetic (tests) keep it.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.dtype != np.float64:
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    check_finite(name, arr)
    return arr


def check_finite(name: str, arr: np.ndarray) -> None:
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")


def check_nonzero_rows(name: str, arr: np.ndarray) -> np.ndarray:
    """Check that no vector along the last axis has zero norm; return the norms.

    Cosine similarity is undefined for a zero vector, so under the cosine
    metric such a row is an error rather than a silent 0 or NaN.
    """
    norms = np.linalg.norm(arr, axis=-1)
    zero = norms == 0
    if zero.any():
        where = np.argwhere(zero)[:5].tolist()
        raise ValueError(
            f"{name} has {int(zero.sum())} zero-norm vector(s) (first at index {where}); "
            "cosine similarity is undefined for them"
        )
    return norms


def check_same_dim(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"dimension mismatch: {name_a} has dimension {a.shape[-1]} but {name_b} has {b.shape[-1]}"
        )


def check_k(k: Any, n_candidates: int, what: str = "candidates") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if k > n_candidates:
        raise ValueError(f"k={k} is larger than the number of {what} ({n_candidates})")
    return k


def check_metric(metric: str) -> str:
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    return metric


def check_same_length(**arrays: Any) -> int:
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    return next(iter(lengths.values()), 0)
