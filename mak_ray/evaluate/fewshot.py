"""Class-balanced, seeded few-shot subsets of a labelled train set."""

from __future__ import annotations

import math

import numpy as np


def per_class_count(amount: float, class_size: int) -> int:
    """How many examples one class contributes.

    ``amount < 1`` is a fraction of the class (floored, at least 1); ``amount >= 1`` is a whole count,
    capped at the class size.
    """
    if not amount > 0:
        raise ValueError(f"few-shot amount must be > 0, got {amount!r}")
    if amount < 1:
        return min(class_size, max(1, math.floor(amount * class_size + 1e-9)))
    if float(amount) != math.floor(amount):
        raise ValueError(f"a few-shot count (amount >= 1) must be a whole number, got {amount!r}")
    return min(class_size, int(amount))


def few_shot_subset(labels: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """Indices (sorted, int64) of a class-balanced subset of ``labels``.

    Each class is sampled without replacement with its own draw from one ``numpy`` Generator seeded by
    ``seed``; classes are visited in sorted order so the result depends only on labels, amount and seed.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        k = per_class_count(amount, len(members))
        picked.append(rng.choice(members, size=k, replace=False))
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)
