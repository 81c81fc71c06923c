"""MAK selection core: pure compute, no I/O.

ECLE (tailness), proximity to the target, MAK scoring with mergeable
statistics, exact pruned greedy K-center, sharded two-stage K-center on Ray,
and the selection step with its ablation baselines.
"""

from .ecle import ecle
from .kcenter import greedy_k_center
from .proximity import fit_centroids, proximity
from .scoring import mak_score
from .selection import (
    METHODS,
    SELECTORS,
    Selection,
    core_size,
    select,
    select_kcenter,
    select_mak,
    select_proximity,
    select_random,
    select_tailness,
)
from .two_stage import default_per_shard_k, two_stage_k_center
from .zstats import ScoreStats, TopN, ZStats

__all__ = [
    "METHODS",
    "SELECTORS",
    "ScoreStats",
    "Selection",
    "TopN",
    "ZStats",
    "core_size",
    "default_per_shard_k",
    "ecle",
    "fit_centroids",
    "greedy_k_center",
    "mak_score",
    "proximity",
    "select",
    "select_kcenter",
    "select_mak",
    "select_proximity",
    "select_random",
    "select_tailness",
    "two_stage_k_center",
]
