"""Exact greedy K-center (farthest-first traversal) and its sharded two-stage form on Ray."""

from .greedy import greedy_k_center
from .two_stage import default_per_shard_k, two_stage_k_center

__all__ = ["default_per_shard_k", "greedy_k_center", "two_stage_k_center"]
