"""The paper's scoring math (ECLE, proximity to the target, the z-scored MAK score) and ``mak_gated``'s gate."""

from .ecle import ecle
from .gate import gated_key, leave_one_out_nn, nn_distance, quantile_of, quantile_table
from .proximity import fit_centroids, proximity
from .zscore import ScoreStats, ZStats, mak_score

__all__ = [
    "ScoreStats",
    "ZStats",
    "ecle",
    "fit_centroids",
    "gated_key",
    "leave_one_out_nn",
    "mak_score",
    "nn_distance",
    "proximity",
    "quantile_of",
    "quantile_table",
]
