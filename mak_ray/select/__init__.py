"""The selection library: each method's ranking key, the in-memory selector, and streaming top-N."""

from .methods import (
    Selection,
    candidate_count,
    check_method,
    core_size,
    ranking_key,
    select,
    top_positions,
    uniform_key,
)
from .topn import TopN

__all__ = [
    "Selection",
    "TopN",
    "candidate_count",
    "check_method",
    "core_size",
    "ranking_key",
    "select",
    "top_positions",
    "uniform_key",
]
