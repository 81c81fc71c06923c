"""Rounding margins and triangle-inequality thresholds shared by the K-center implementations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._backend import Ops


def error_margin(x: np.ndarray, *others: np.ndarray | None) -> float:
    """Bound on the absolute error of a computed squared distance |x|^2 + |c|^2 - 2 x.c."""
    d = x.shape[1]
    unit = float(np.finfo(x.dtype).eps)
    maxsq = max(float((a * a).sum(1).max()) for a in (x, *others) if a is not None and len(a))
    return 4.0 * (d + 4) * unit * 2.0 * maxsq + 1e-30


def on_unit_sphere(err: float, *arrays: np.ndarray | None) -> bool:
    """All vectors have unit norm to well within the rounding margin, so angles bound distances."""
    return all(
        a is None or len(a) == 0 or float(np.abs((a * a).sum(1) - 1.0).max()) <= err / 8 for a in arrays
    )


def metric_distance(d2: np.ndarray, angular: bool) -> np.ndarray:
    """Squared distance -> a distance obeying the triangle inequality (the angle, on the unit sphere), float64."""
    d = np.sqrt(np.maximum(np.asarray(d2, dtype=np.float64), 0.0))
    return 2.0 * np.arcsin(np.minimum(d / 2.0, 1.0)) if angular else d


def move_threshold(ops: Ops, d2cs: Any, err: float, angular: bool) -> Any:
    """Per group: the largest mind2 that provably cannot move to the new center.

    ``d2cs`` is the computed squared distance from each group center c to the
    new center s.  Chordal: |x - s| >= |c - s| - |x - c|, so x stays if
    |x - c|^2 <= |c - s|^2 / 4.  On the unit sphere angles obey the same
    inequality and give a larger threshold: x stays if angle(x, c) <=
    angle(c, s) / 2, i.e. |x - c|^2 <= 4 sin^2(angle(c, s) / 4), which is
    ``d / (2 + sqrt(4 - d))`` for d = |c - s|^2 (no cancellation; up to 2x the
    chordal threshold for far centers).  Both keep a rounding margin.
    """
    d2 = ops.clamp0(d2cs - err)
    if angular:
        return d2 / (2.0 + ops.sqrt(ops.clamp0(4.0 - d2))) - 2.0 * err
    dcs = ops.sqrt(d2)
    sqrt_2err = math.sqrt(2.0 * err)
    half = ops.clamp0((dcs - sqrt_2err) / 2.0)
    return ops.where(dcs > sqrt_2err, half * half - err, ops.full(1, -math.inf, ops.float_dtype(dcs)))
