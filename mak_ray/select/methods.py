"""The selection methods, each one ranking key (higher first) plus K-center for the diverse ones.

* ``mak``       key = the MAK score; keep the top ceil(core_ratio * K), then K-center seeded with the target;
* ``mak_gated`` key = ECLE inside the nearest-target gate (:func:`mak_ray.mak.gate.gated_key`), the rest below
                it; then as ``mak`` (a departure from the paper: docs/ARCHITECTURE.md, "Selection fidelity");
* ``random``    key = a seeded uniform number per id (a hash of (seed, id): independent of order and sharding);
* ``tailness``  key = ECLE;
* ``proximity`` key = -proximity (nearest to the target first);
* ``kcenter``   every row is a candidate; K-center seeded with the target (diversity only).

:func:`ranking_key` and :func:`candidate_count` are the whole definition of a method: the streaming select
stage (:mod:`mak_ray.stages.select`) and the in-memory :func:`select` both call them, so they pick the same
rows. Ties in the key go to the lower position in the pool's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mak_ray.hashing import mix64
from mak_ray.kcenter import greedy_k_center
from mak_ray.mak import ScoreStats, gated_key, mak_score
from mak_ray.registry import DIVERSE_METHODS, METHODS
from mak_ray.validate import as_float_array, check_finite, check_k

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class Selection:
    """K picks in pick order: ``ids`` and ``index`` (positions in the inputs) of the picks, the MAK ``scores`` of
    the picks (None without ecle and proximity), and the K-center ``radii`` after each pick (diverse methods)."""

    method: str
    ids: np.ndarray
    index: np.ndarray
    scores: np.ndarray | None
    radii: np.ndarray | None = None


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose from {METHODS}")
    return method


def core_size(k: int, core_ratio: float, n: int) -> int:
    """ceil(core_ratio * k), at least k and at most n."""
    if not core_ratio >= 1.0:
        raise ValueError(f"core_ratio must be >= 1, got {core_ratio}")
    return min(n, max(k, math.ceil(core_ratio * k)))


def candidate_count(method: str, k: int, core_ratio: float, n: int) -> int:
    """How many rows, best first by the method's key, the method looks at: the core for ``mak``, every row
    for ``kcenter``, the K picks themselves for the others."""
    check_method(method)
    if method in ("mak", "mak_gated"):
        return core_size(k, core_ratio, n)
    return n if method == "kcenter" else k


def uniform_key(seed: int, ids: Any) -> np.ndarray:
    """A number in [0, 1) per id that depends on (seed, id) only: FNV-1a over the id's UTF-8 bytes, seeded, then
    SplitMix64. Vectorised over the Arrow buffers: the work is one numpy pass per byte position."""
    arr = (
        ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array([str(i) for i in ids], pa.string())
    )
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if arr.null_count:
        raise ValueError("ids must not be null")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = (
        np.frombuffer(arr.buffers()[2], dtype=np.uint8)
        if arr.buffers()[2] is not None
        else np.zeros(0, np.uint8)
    )
    lens = np.diff(offsets)
    order = np.argsort(-lens, kind="stable")  # longest first: the rows still hashing at byte j are a prefix
    starts, lens_sorted = offsets[:-1][order], lens[order]
    with np.errstate(over="ignore"):
        h = np.full(n, _FNV_OFFSET ^ mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)), dtype=np.uint64)
        active = n
        for j in range(int(lens_sorted[0]) if n else 0):
            while active and lens_sorted[active - 1] <= j:
                active -= 1
            h[:active] = (h[:active] ^ data[starts[:active] + j].astype(np.uint64)) * _FNV_PRIME
        h = mix64(h ^ lens_sorted.astype(np.uint64))
    out = np.empty(n, dtype=np.float64)
    out[order] = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def ranking_key(
    method: str,
    *,
    ecle: Any = None,
    proximity: Any = None,
    ids: Any = None,
    nn: Any = None,
    gate: float | None = None,
    stats: ScoreStats | None = None,
    loss_weight: float = 0.5,
    seed: int = 0,
    n: int | None = None,
) -> np.ndarray:
    """The method's float64 key per row, higher first (``n``: the row count, for ``kcenter``'s constant key;
    ``nn`` and ``gate``: the rows' nearest-target distances and the gate on them, for ``mak_gated``)."""
    check_method(method)
    if method == "mak_gated":
        _require("ecle", ecle, method), _require("nn_distance", nn, method), _require("gate", gate, method)
        return gated_key(ecle, nn, gate)
    if method == "mak":
        _require("ecle", ecle, method), _require("proximity", proximity, method)
        return mak_score(ecle, proximity, loss_weight, stats)
    if method == "tailness":
        _require("ecle", ecle, method)
        e = np.asarray(ecle, dtype=np.float64)
        check_finite("ecle", e)
        return e
    if method == "proximity":
        _require("proximity", proximity, method)
        p = np.asarray(proximity, dtype=np.float64)
        check_finite("proximity", p)
        return -p
    if method == "random":
        _require("ids", ids, method)
        return uniform_key(seed, ids)
    size = n if n is not None else next(len(a) for a in (ecle, proximity, ids) if a is not None)
    return np.zeros(size, dtype=np.float64)


def top_positions(key: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest keys, largest first, ties to the lower position (argpartition, then a
    stable sort of the few kept)."""
    key = np.asarray(key, dtype=np.float64)
    if n >= len(key):
        return np.argsort(-key, kind="stable")
    part = np.argpartition(-key, n - 1)[:n]
    cut = key[part].min()
    keep = np.flatnonzero(key >= cut)  # every tie at the cut, so the lowest positions win
    keep = keep[np.argsort(-key[keep], kind="stable")]
    return keep[:n]


def _require(name: str, value: Any, method: str) -> None:
    if value is None:
        raise ValueError(f"method {method!r} needs {name}")


def _length(**arrays: Any) -> int:
    sizes = {name: len(a) for name, a in arrays.items() if a is not None}
    if not sizes:
        raise ValueError("nothing to select from: pass ids, scores or embeddings")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"length mismatch between inputs: {sizes}")
    return next(iter(sizes.values()))


def select(
    method: str,
    *,
    k: int,
    ids: Any = None,
    ecle: Any = None,
    proximity: Any = None,
    embeddings: Any = None,
    target_embeddings: Any = None,
    nn: Any = None,
    gate: float | None = None,
    stats: ScoreStats | None = None,
    loss_weight: float = 0.5,
    core_ratio: float = 1.5,
    seed: int = 0,
    metric: str = "cosine",
) -> Selection:
    """Pick ``k`` rows with ``method`` from arrays held in memory (``ids`` default to the positions).

    ``stats``: pool-wide z-statistics when the arrays are a part of a larger pool (the streaming stage's
    candidates); without it the arrays' own statistics are used.
    """
    check_method(method)
    n = _length(ids=ids, ecle=ecle, proximity=proximity, embeddings=embeddings)
    k = check_k(k, n)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    key = ranking_key(
        method,
        ecle=ecle,
        proximity=proximity,
        ids=ids,
        nn=nn,
        gate=gate,
        stats=stats,
        loss_weight=loss_weight,
        seed=seed,
        n=n,
    )
    cand = top_positions(key, candidate_count(method, k, core_ratio, n))
    radii = None
    if method in DIVERSE_METHODS:
        _require("embeddings", embeddings, method)
        emb = as_float_array("embeddings", embeddings, 2)
        picks, radii = greedy_k_center(emb[cand], k, target_embeddings, metric=metric)
        index = cand[np.asarray(picks, dtype=np.int64)]
    else:
        index = cand[:k]
    scores = None
    if ecle is not None and proximity is not None:
        scores = mak_score(ecle, proximity, loss_weight, stats)[index]
    return Selection(method, ids[index], index.astype(np.int64), scores, radii)
