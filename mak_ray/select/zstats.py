"""Mergeable streaming statistics for scoring a pool that never fits in one process.

``ZStats`` keeps (count, mean, M2) and merges with Chan et al.'s parallel
formula, so shards scored on different workers are z-normalised with the same
global mean and standard deviation.  ``TopN`` keeps the n best (score, id)
pairs of a stream with a deterministic tie-break on id, so the K-center core
can be chosen in one pass over Parquet batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .validate import check_finite


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


class TopN:
    """The ``n`` highest scores of a stream; ties go to the smaller id.

    Ids may be integers or strings (compared as such; do not mix the two).
    Memory is O(n + batch).  ``merge`` combines accumulators of separate
    shards, and the result does not depend on batch order or sharding.
    """

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.n = int(n)
        self.scores = np.empty(0, dtype=np.float64)
        self.ids: np.ndarray = np.empty(0, dtype=np.int64)

    def push(self, scores: Any, ids: Any) -> TopN:
        s = np.asarray(scores, dtype=np.float64).ravel()
        i = np.asarray(ids)
        if i.ndim != 1 or len(i) != len(s):
            raise ValueError(f"scores and ids must be 1-D of the same length, got {s.shape} and {i.shape}")
        check_finite("scores", s)
        if not len(s):
            return self
        if len(self.scores) >= self.n:  # cheap pre-filter: only values that can still enter
            keep = s >= self.scores[-1]
            s, i = s[keep], i[keep]
            if not len(s):
                return self
        if len(self.ids) == 0:
            all_s, all_i = s, i
        else:
            all_s = np.concatenate([self.scores, s])
            all_i = np.concatenate([self.ids, i])
        order = np.lexsort((all_i, -all_s))[: self.n]  # score desc, then id asc
        self.scores, self.ids = all_s[order], all_i[order]
        return self

    def merge(self, other: TopN) -> TopN:
        out = TopN(min(self.n, other.n))
        out.push(self.scores, self.ids)
        out.push(other.scores, other.ids)
        return out

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), best first."""
        return self.ids.copy(), self.scores.copy()

    def __len__(self) -> int:
        return len(self.ids)
