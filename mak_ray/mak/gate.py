"""The label-free gate of ``mak_gated``: nearest-target distance, and the target's own distribution of it.

A pool image's ``nn_distance`` is 1 - its largest cosine similarity to any target image (backbone embeddings).
The gate keeps the pool images whose ``nn_distance`` is within the ``q`` quantile of the target's own
leave-one-out ``nn_distance`` (each target image against the others): an image no farther from the target than
most target images are from their nearest neighbour. This departs from the paper, whose proximity measures the
distance to the nearest of 10 K-means centroids; see docs/ARCHITECTURE.md, "Selection fidelity".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mak_ray.validate import check_finite

from .proximity import proximity, unit_rows

QUANTILE_LEVELS = np.round(np.linspace(0.0, 1.0, 201), 4)  # the target reference keeps these quantiles
REFERENCE_QUERIES = 20_000  # at most this many target images are measured against the whole target
_BLOCK_ELEMS = 4_000_000  # similarities held at once (16 MB): query rows per block = this / target size


def nn_distance(x: Any, reference: Any) -> np.ndarray:
    """1 - the largest cosine similarity of each row of ``x`` to a row of ``reference`` (float64): proximity with
    every reference row as a centroid."""
    return proximity(x, reference)


def leave_one_out_nn(target: Any, seed: int = 0, queries: int = REFERENCE_QUERIES) -> np.ndarray:
    """The target's own ``nn_distance``: each of up to ``queries`` target images (a seeded sample) against all
    the others."""
    t = unit_rows("target", target)
    if len(t) < 2:
        raise ValueError("the target needs at least 2 usable images for a nearest-neighbour reference")
    idx = np.arange(len(t))
    if len(t) > queries:
        idx = np.sort(np.random.default_rng(seed).choice(len(t), queries, replace=False))
    out = np.empty(len(idx), dtype=np.float64)
    step = max(1, _BLOCK_ELEMS // len(t))
    for s in range(0, len(idx), step):
        rows = idx[s : s + step]
        sim = t[rows] @ t.T
        sim[np.arange(len(rows)), rows] = -np.inf
        out[s : s + step] = 1.0 - sim.max(axis=1)
    return out


def quantile_table(values: Any) -> list[float]:
    """``values``' quantiles at :data:`QUANTILE_LEVELS` (the reference a gate is read from)."""
    v = np.asarray(values, dtype=np.float64)
    check_finite("values", v)
    return [float(q) for q in np.quantile(v, QUANTILE_LEVELS)]


def quantile_of(table: list[float], q: float) -> float:
    """The ``q`` quantile read (linearly interpolated) from a :func:`quantile_table`."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    return float(np.interp(q, QUANTILE_LEVELS, np.asarray(table, dtype=np.float64)))


def gated_key(ecle: Any, nn: Any, gate: float) -> np.ndarray:
    """``mak_gated``'s ranking key: ECLE inside the gate (``nn_distance <= gate``); outside it, below every
    gated row, nearer to the target first (``-1 - nn_distance``; ECLE is a loss, never negative)."""
    e = np.asarray(ecle, dtype=np.float64)
    d = np.asarray(nn, dtype=np.float64)
    check_finite("ecle", e), check_finite("nn_distance", d)
    if e.shape != d.shape:
        raise ValueError(f"ecle and nn_distance differ in shape: {e.shape} vs {d.shape}")
    return np.where(d <= gate, e, -1.0 - d)
