"""The MAK score ``w z(ECLE) - (1 - w) z(proximity)`` and the mergeable statistics behind its z-scores.

``ZStats`` keeps (count, mean, M2) and merges with Chan et al.'s parallel formula, so a pool scored in many
pieces is z-normalised with one global mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mak_ray.validate import check_finite


@dataclass
class ZStats:
    """count / mean / M2 accumulator (population variance = M2 / count)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: Any) -> ZStats:
        """Fold a batch of values in (in place); returns self for chaining."""
        x = np.asarray(values, dtype=np.float64).ravel()
        check_finite("values", x)
        if x.size:
            batch = ZStats(int(x.size), float(x.mean()), float(((x - x.mean()) ** 2).sum()))
            merged = self.merge(batch)
            self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        return self

    def merge(self, other: ZStats) -> ZStats:
        """Combine two accumulators (Chan et al. 1979); neither is modified."""
        if other.count == 0:
            return ZStats(self.count, self.mean, self.m2)
        if self.count == 0:
            return ZStats(other.count, other.mean, other.m2)
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return ZStats(n, mean, m2)

    @property
    def variance(self) -> float:
        if self.count == 0:
            raise ValueError("ZStats is empty: no values were added")
        return self.m2 / self.count

    @property
    def std(self) -> float:
        return float(np.sqrt(max(self.variance, 0.0)))

    def z(self, values: Any) -> np.ndarray:
        """(x - mean) / std; a zero std gives all zeros (every value equals the mean)."""
        x = np.asarray(values, dtype=np.float64)
        std = self.std
        if std == 0.0:
            return np.zeros_like(x)
        return (x - self.mean) / std

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZStats:
        return cls(int(d["count"]), float(d["mean"]), float(d["m2"]))

    @classmethod
    def of(cls, values: Any) -> ZStats:
        return cls().update(values)


@dataclass
class ScoreStats:
    """The pair of accumulators that MAK scoring needs (ECLE and proximity)."""

    ecle: ZStats
    proximity: ZStats

    @classmethod
    def empty(cls) -> ScoreStats:
        return cls(ZStats(), ZStats())

    def update(self, ecle: Any, proximity: Any) -> ScoreStats:
        e = np.asarray(ecle, dtype=np.float64).ravel()
        p = np.asarray(proximity, dtype=np.float64).ravel()
        if e.shape != p.shape:
            raise ValueError(f"length mismatch: ecle has {e.size} values, proximity has {p.size}")
        self.ecle.update(e)
        self.proximity.update(p)
        return self

    def merge(self, other: ScoreStats) -> ScoreStats:
        return ScoreStats(self.ecle.merge(other.ecle), self.proximity.merge(other.proximity))

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"ecle": self.ecle.to_dict(), "proximity": self.proximity.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreStats:
        return cls(ZStats.from_dict(d["ecle"]), ZStats.from_dict(d["proximity"]))


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
