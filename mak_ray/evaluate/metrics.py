"""Top-1 accuracy overall, per class, per many/medium/few group, and the two balancedness stds.

Definitions (all accuracies are fractions in [0, 1]):

- ``top1``: correct test predictions / test examples (micro average).
- ``per_class``: accuracy over the test examples of each class present in the test set.
- ``groups[g]``: the **mean of the per-class accuracies** of the classes in group ``g`` (a macro average,
  so every class counts once whatever its test size); ``None`` when no test class falls in ``g``.
- ``group_std``: population std (ddof=0) of the non-empty group means — the paper's balancedness measure;
  0.0 with one non-empty group.
- ``class_std``: population std (ddof=0) of the per-class accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mak_ray.evaluate.groups import GROUPS


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy for each class that occurs in ``y_true`` (keys are ``str(class)``, sorted)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out: dict[str, float] = {}
    for cls in np.unique(y_true):
        mask = y_true == cls
        out[str(cls)] = float(np.mean(y_pred[mask] == cls))
    return out


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: Mapping[str, str]) -> dict[str, Any]:
    """All metrics of one setting; ``groups`` maps every test class (as ``str``) to many/medium/few."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if len(y_true) == 0:
        raise ValueError("no test examples")
    per_class = per_class_accuracy(y_true, y_pred)
    missing = sorted(c for c in per_class if c not in groups)
    if missing:
        raise ValueError(f"classes without a group: {missing[:10]}")
    group_means: dict[str, float | None] = {}
    group_sizes: dict[str, int] = {}
    for g in GROUPS:
        accs = [a for c, a in per_class.items() if groups[c] == g]
        group_sizes[g] = len(accs)
        group_means[g] = float(np.mean(accs)) if accs else None
    present = [m for m in group_means.values() if m is not None]
    return {
        "top1": float(np.mean(y_true == y_pred)),
        "per_class": per_class,
        "groups": group_means,
        "group_classes": group_sizes,
        "group_std": float(np.std(present)),
        "class_std": float(np.std(list(per_class.values()))),
        "n_test": int(len(y_true)),
    }
