"""The ``n`` best rows of a stream by a score, mergeable across shards."""

from __future__ import annotations

from typing import Any

import numpy as np

from mak_ray.validate import check_finite


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
