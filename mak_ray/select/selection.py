"""The MAK selection step and its ablation baselines, behind one interface.

Every selector takes the same keyword arguments and returns a ``Selection``:

* ``mak``       score, keep the top ceil(core_ratio * K), K-center seeded with the target;
* ``random``    a seeded uniform sample;
* ``tailness``  highest ECLE first;
* ``proximity`` nearest to the target first (lowest proximity);
* ``kcenter``   K-center over all candidates seeded with the target (diversity only).

Ties always go to the lower position.  For streaming use, pass the ``TopN``
core (ids, ecle, proximity, embeddings of the best ceil(core_ratio*K) rows)
together with the pool-wide ``ScoreStats``: the top of the core is the core
itself, so the result equals selecting from the whole pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .kcenter import greedy_k_center
from .scoring import mak_score
from .validate import as_float_array, check_k
from .zstats import ScoreStats

METHODS = ("mak", "random", "tailness", "proximity", "kcenter")


@dataclass(frozen=True)
class Selection:
    """K picks in pick order.

    ``ids``: the caller's ids of the picks; ``index``: their positions in the
    inputs; ``scores``: the MAK score of each pick (None when ecle or
    proximity were not given); ``radii``: K-center radius after each pick
    (diversity methods only).
    """

    method: str
    ids: np.ndarray
    index: np.ndarray
    scores: np.ndarray | None
    radii: np.ndarray | None = None


def core_size(k: int, core_ratio: float, n: int) -> int:
    """ceil(core_ratio * k), at least k and at most n."""
    if not core_ratio >= 1.0:
        raise ValueError(f"core_ratio must be >= 1, got {core_ratio}")
    return min(n, max(k, math.ceil(core_ratio * k)))


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n largest values, largest first, ties to the lower position."""
    return np.lexsort((np.arange(len(values)), -np.asarray(values, dtype=np.float64)))[:n]


def _prepare(ids, ecle, proximity, embeddings, k) -> tuple[np.ndarray, int, int]:
    sizes = {
        name: len(a)
        for name, a in (("ids", ids), ("ecle", ecle), ("proximity", proximity), ("embeddings", embeddings))
        if a is not None
    }
    if not sizes:
        raise ValueError("nothing to select from: pass ids, scores or embeddings")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"length mismatch between inputs: {sizes}")
    n = next(iter(sizes.values()))
    k = check_k(k, n)
    return (np.arange(n) if ids is None else np.asarray(ids)), n, k


def _scores(ecle, proximity, loss_weight, stats) -> np.ndarray | None:
    if ecle is None or proximity is None:
        return None
    return mak_score(ecle, proximity, loss_weight, stats)


def _finish(method, ids, index, scores, radii=None) -> Selection:
    index = np.asarray(index, dtype=np.int64)
    return Selection(method, ids[index], index, None if scores is None else scores[index], radii)


def _require(name: str, value: Any, method: str) -> None:
    if value is None:
        raise ValueError(f"method {method!r} needs {name}")


def select_mak(
    *,
    k: int,
    ecle: Any,
    proximity: Any,
    embeddings: Any,
    target_embeddings: Any = None,
    ids: Any = None,
    loss_weight: float = 0.5,
    core_ratio: float = 1.5,
    stats: ScoreStats | None = None,
    metric: str = "cosine",
    seed: int = 0,
) -> Selection:
    """MAK: top ceil(core_ratio*k) by score, then K-center seeded with the target embeddings."""
    for name, v in (("ecle", ecle), ("proximity", proximity), ("embeddings", embeddings)):
        _require(name, v, "mak")
    ids, n, k = _prepare(ids, ecle, proximity, embeddings, k)
    scores = _scores(ecle, proximity, loss_weight, stats)
    core = top_indices(scores, core_size(k, core_ratio, n))
    emb = as_float_array("embeddings", embeddings, 2)
    picks, radii = greedy_k_center(emb[core], k, target_embeddings, metric=metric)
    return _finish("mak", ids, core[picks], scores, radii)


def select_random(
    *,
    k: int,
    ids: Any = None,
    ecle: Any = None,
    proximity: Any = None,
    embeddings: Any = None,
    loss_weight: float = 0.5,
    stats: ScoreStats | None = None,
    seed: int = 0,
    **_: Any,
) -> Selection:
    """A uniform sample without replacement from ``seed``."""
    ids, n, k = _prepare(ids, ecle, proximity, embeddings, k)
    index = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1EC7])).choice(n, size=k, replace=False)
    return _finish("random", ids, index, _scores(ecle, proximity, loss_weight, stats))


def select_tailness(
    *,
    k: int,
    ecle: Any,
    ids: Any = None,
    proximity: Any = None,
    embeddings: Any = None,
    loss_weight: float = 0.5,
    stats: ScoreStats | None = None,
    **_: Any,
) -> Selection:
    """Highest ECLE first."""
    _require("ecle", ecle, "tailness")
    ids, n, k = _prepare(ids, ecle, proximity, embeddings, k)
    e = np.asarray(ecle, dtype=np.float64)
    if not np.isfinite(e).all():
        raise ValueError("ecle contains NaN or infinite values")
    return _finish("tailness", ids, top_indices(e, k), _scores(ecle, proximity, loss_weight, stats))


def select_proximity(
    *,
    k: int,
    proximity: Any,
    ids: Any = None,
    ecle: Any = None,
    embeddings: Any = None,
    loss_weight: float = 0.5,
    stats: ScoreStats | None = None,
    **_: Any,
) -> Selection:
    """Nearest to the target first (lowest proximity)."""
    _require("proximity", proximity, "proximity")
    ids, n, k = _prepare(ids, ecle, proximity, embeddings, k)
    p = np.asarray(proximity, dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError("proximity contains NaN or infinite values")
    return _finish("proximity", ids, top_indices(-p, k), _scores(ecle, proximity, loss_weight, stats))


def select_kcenter(
    *,
    k: int,
    embeddings: Any,
    target_embeddings: Any = None,
    ids: Any = None,
    ecle: Any = None,
    proximity: Any = None,
    loss_weight: float = 0.5,
    stats: ScoreStats | None = None,
    metric: str = "cosine",
    **_: Any,
) -> Selection:
    """K-center over all candidates seeded with the target (no scoring)."""
    _require("embeddings", embeddings, "kcenter")
    ids, n, k = _prepare(ids, ecle, proximity, embeddings, k)
    picks, radii = greedy_k_center(embeddings, k, target_embeddings, metric=metric)
    return _finish("kcenter", ids, picks, _scores(ecle, proximity, loss_weight, stats), radii)


def _select_mak_kw(**kw: Any) -> Selection:
    allowed = {
        "k",
        "ecle",
        "proximity",
        "embeddings",
        "target_embeddings",
        "ids",
        "loss_weight",
        "core_ratio",
        "stats",
        "metric",
        "seed",
    }
    return select_mak(**{key: v for key, v in kw.items() if key in allowed})


SELECTORS: dict[str, Callable[..., Selection]] = {
    "mak": _select_mak_kw,
    "random": select_random,
    "tailness": select_tailness,
    "proximity": select_proximity,
    "kcenter": select_kcenter,
}


def select(method: str, **kwargs: Any) -> Selection:
    """Run ``method`` (one of ``METHODS``) with the shared keyword arguments."""
    if method not in SELECTORS:
        raise ValueError(f"unknown selection method {method!r}; choose from {METHODS}")
    return SELECTORS[method](**kwargs)
