"""The paper's scoring math: ECLE (tailness), proximity to the target, and the z-scored MAK score."""

from .ecle import ecle
from .proximity import fit_centroids, proximity
from .zscore import ScoreStats, ZStats, mak_score

__all__ = ["ScoreStats", "ZStats", "ecle", "fit_centroids", "mak_score", "proximity"]
