"""Many/medium/few class groups from each class's count in the long-tailed target training set.

The paper's defaults are many > 100, medium 20-100 (both ends inclusive), few < 20. Small demos scale the
thresholds down, so both are parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Group = Literal["many", "medium", "few"]
GROUPS: tuple[Group, ...] = ("many", "medium", "few")


def group_of(count: int, many_threshold: int = 100, few_threshold: int = 20) -> Group:
    """``count > many_threshold``: many; ``count < few_threshold``: few; otherwise medium."""
    if count > many_threshold:
        return "many"
    if count < few_threshold:
        return "few"
    return "medium"


def class_groups(
    target_counts: Mapping[str, int], many_threshold: int = 100, few_threshold: int = 20
) -> dict[str, Group]:
    """Assign each class to a group by its count in the target set (see :func:`group_of`)."""
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
    out: dict[str, Group] = {}
    for name, count in target_counts.items():
        if count < 0:
            raise ValueError(f"class {name!r} has a negative count {count}")
        out[str(name)] = group_of(int(count), many_threshold, few_threshold)
    return out
