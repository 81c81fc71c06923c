"""MAK score: prefer samples that are hard (high ECLE) yet near the target (low proximity)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .validate import check_finite
from .zstats import ScoreStats


def mak_score(
    ecle: Any, proximity: Any, loss_weight: float = 0.5, stats: ScoreStats | None = None
) -> np.ndarray:
    """``w * z(ecle) - (1 - w) * z(proximity)`` as float64 [N].

    ``stats`` carries the global (count, mean, M2) of both inputs, e.g. merged
    from every shard, so batches scored apart share one normalisation; without
    it the z-scores use the given arrays themselves.  A zero standard deviation
    makes that term 0 instead of dividing by zero.
    """
    e = np.asarray(ecle, dtype=np.float64).ravel()
    p = np.asarray(proximity, dtype=np.float64).ravel()
    if e.shape != p.shape:
        raise ValueError(f"length mismatch: ecle has {e.size} values, proximity has {p.size}")
    check_finite("ecle", e)
    check_finite("proximity", p)
    w = float(loss_weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"loss_weight must be in [0, 1], got {loss_weight}")
    if stats is None:
        if e.size == 0:
            return np.zeros(0, dtype=np.float64)
        stats = ScoreStats.empty().update(e, p)
    return w * stats.ecle.z(e) - (1.0 - w) * stats.proximity.z(p)
