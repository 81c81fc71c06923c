"""MAK selection core: pure compute, no I/O.

ECLE (tailness), proximity to the target, MAK scoring with mergeable
statistics, exact pruned greedy K-center, sharded two-stage K-center on Ray,
and the selection step with its ablation baselines.
"""

from .ecle import ecle
from .proximity import fit_centroids, proximity
from .scoring import mak_score
from .zstats import ScoreStats, TopN, ZStats

__all__ = [
    "ScoreStats",
    "TopN",
    "ZStats",
    "ecle",
    "fit_centroids",
    "mak_score",
    "proximity",
]
