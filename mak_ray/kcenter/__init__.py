"""Exact greedy K-center (farthest-first traversal) and its sharded two-stage form on Ray."""

from .greedy import greedy_k_center
from .two_stage import two_stage_k_center

__all__ = ["greedy_k_center", "two_stage_k_center"]
