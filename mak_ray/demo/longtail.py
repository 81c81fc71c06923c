"""Long-tailed subsets with an exponential profile, as in the long-tailed CIFAR/ImageNet benchmarks.

Class ranked ``i`` (0 = head) keeps ``n_max * ratio ** (-i / (C - 1))`` images, so the head/tail ratio is the
imbalance ratio. Which real class gets which rank is a seeded permutation: the tail is not always the same
classes, yet a seed reproduces it exactly.
"""

from __future__ import annotations

import numpy as np


def tail_order(n_classes: int, seed: int) -> list[int]:
    """Class ids from head (rank 0) to tail (rank C-1), a seeded permutation."""
    return [int(c) for c in np.random.default_rng(seed).permutation(n_classes)]


def long_tail_counts(
    n_max: int, n_classes: int, imbalance_ratio: float = 100, seed: int = 0
) -> dict[int, int]:
    """``{class id: count}`` following ``n_max * ratio^(-rank/(C-1))``, rounded, at least 1 per class."""
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    order = tail_order(n_classes, seed)
    counts: dict[int, int] = {}
    for rank, cls in enumerate(order):
        frac = rank / (n_classes - 1) if n_classes > 1 else 0.0
        counts[cls] = max(1, int(round(n_max * float(imbalance_ratio) ** (-frac))))
    return dict(sorted(counts.items()))


def tail_classes(counts: dict[int, int]) -> list[int]:
    """The lower half of the classes by count (ties broken by id): the demo's "tail" for reports."""
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return sorted(ranked[(len(ranked) + 1) // 2 :])


def build_split(labels: np.ndarray, counts: dict[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``counts[c]`` random indices of each class ``c``; return ``(target indices, remaining indices)``.

    Both are sorted; classes missing from ``counts`` go entirely to the remainder.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls in sorted(counts):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < counts[cls]:
            raise ValueError(f"class {cls} has {len(idx)} images, {counts[cls]} requested")
        chosen.append(rng.choice(idx, size=counts[cls], replace=False))
    target = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[target] = False
    return target.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def balanced_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices with ``per_class`` random images of every class (all of them when ``None``)."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    picks = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < per_class:
            raise ValueError(f"class {cls} has {len(idx)} images, {per_class} requested")
        picks.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)
