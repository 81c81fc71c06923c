"""Exact greedy K-center (farthest-first traversal): the public entry point and the eager update.

Two exact implementations pick the same points:

- numpy (default, the CPU path): ``grouped.GroupedGreedy``: per-group member
  lists, pruned updates, centers in the cells of a coarse quantiser so that a
  pick reads only the centers near it, and a lazy init pass that measures
  only the candidates that can matter (see that module);
- torch (CPU or CUDA, the GPU path): ``_Coverage`` below.  Every point keeps
  its nearest chosen center and the squared distance to it; a new center
  ``s`` can only take a point ``x`` from center ``c`` if ``x`` is farther from
  ``c`` than a threshold set by ``d(c, s)`` (triangle inequality,
  ``bounds.move_threshold``), so one comparison per point rules most points
  out; then one argmax over all points.  Each pick is a few passes over all
  points and centers, which suits a GPU.

``resolve_device`` turns the configured device (``auto``, ``cpu``, ``cuda``)
into the one to use.

Both keep a floating-point safety margin on every bound, so the picks are
exactly those of the plain full-recompute algorithm (up to ties that rounding
decides, which the margin cannot create).

Metric: ``cosine`` works on L2-normalised vectors, where Euclidean distance is
monotone in cosine distance (``|x - y|^2 = 2 (1 - cos)``), so the picks are the
same; radii are reported as cosine distance ``1 - cos``.  ``euclidean``
reports plain Euclidean distance.  Without ``init`` the first pick is index 0
(all distances are infinite; ties go to the lowest index).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from mak_ray.validate import as_float_array, check_k, check_metric, check_nonzero_rows, check_same_dim

from ._backend import Ops, get_ops
from .bounds import error_margin, move_threshold, on_unit_sphere
from .grouped import GroupedGreedy
from .nearest import nearest_init

log = logging.getLogger(__name__)


def prepare_points(name: str, x: Any, metric: str) -> np.ndarray:
    """Validate and (for cosine) L2-normalise; keeps float64, else float32."""
    arr = as_float_array(name, x, 2)
    if metric == "cosine":
        norms = check_nonzero_rows(name, arr)
        arr = arr / norms[:, None].astype(arr.dtype)
    return np.ascontiguousarray(arr)


def to_radius(d2: np.ndarray | float, metric: str) -> np.ndarray:
    """Squared Euclidean distance on the working vectors -> reported radius."""
    d2 = np.maximum(np.asarray(d2, dtype=np.float64), 0.0)
    return d2 / 2.0 if metric == "cosine" else np.sqrt(d2)


KCENTER_DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """The K-center device asked for (``auto``, ``cpu`` or ``cuda``) -> the one to use: ``cpu`` or ``cuda``.

    ``cpu`` is the numpy path (cells, lazy init); ``cuda`` is the torch path on
    the GPU (one pruned pass over all points per pick, which a GPU streams
    fast).  ``auto`` is ``cuda`` when torch sees a CUDA GPU and ``cpu``
    otherwise; asking for ``cuda`` without one is an error, not a silent
    fallback.
    """
    if device not in KCENTER_DEVICES:
        raise ValueError(f"K-center device must be one of {', '.join(KCENTER_DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    has_cuda = _cuda_available()
    if device == "cuda" and not has_cuda:
        raise ValueError(
            "K-center device 'cuda' was asked for, but torch sees no CUDA GPU "
            "(torch.cuda.is_available() is False); use 'auto' or 'cpu'"
        )
    return "cuda" if has_cuda else "cpu"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def greedy_k_center(
    candidates: Any,
    k: int,
    init: Any = None,
    *,
    metric: str = "cosine",
    backend: str = "numpy",
    device: str = "cpu",
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first traversal: ``(indices in pick order, radius after each pick)``.

    ``init`` [m, D] holds already chosen points (e.g. the target embeddings):
    they cover candidates but are never picked.  The radius after a pick is the
    largest distance from any candidate to its nearest chosen point (init or
    picked).  Ties go to the lowest index.  Memory is O((N + m + k) * D) plus
    fixed-size blocks; no N x k or N x m matrix is built.  ``device`` is
    ``cpu``, ``cuda`` or ``auto`` (see ``resolve_device``); on ``cpu``,
    ``backend`` picks ``numpy`` or ``torch``, and ``cuda`` implies torch.  If
    ``stats`` is a dict it receives counters for benchmarks: ``touched``
    (points measured against each new center), ``centers_measured`` (centers
    measured against each new center) and ``init_dist_computed``
    (candidate-init distances computed).
    """
    metric = check_metric(metric)
    x_np = prepare_points("candidates", candidates, metric)
    k = check_k(k, len(x_np))
    init_np = None
    if init is not None:
        init_np = prepare_points("init", init, metric).astype(x_np.dtype, copy=False)
        check_same_dim("candidates", x_np, "init", init_np)
        if len(init_np) == 0:
            init_np = None
    ops = get_ops(backend, resolve_device(device))
    picks, d2s, counters = _farthest_first(ops, x_np, k, init_np, lazy_init=True)
    if stats is not None:
        stats.update(counters)
    return picks, to_radius(d2s, metric)


def _farthest_first(
    ops: Ops,
    x_np: np.ndarray,
    k: int,
    init_np: np.ndarray | None,
    init_state: tuple[np.ndarray, np.ndarray] | None = None,
    lazy_init: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    err = error_margin(x_np, init_np)
    angular = on_unit_sphere(err, x_np, init_np)
    if ops.name == "numpy":
        gg = GroupedGreedy(x_np, k, init_np, err, angular=angular, init_state=init_state, lazy_init=lazy_init)
        picks, radii2, touched, centers = gg.run(k)
        computed, state = gg.init_computed, gg.init_state
    else:
        cov = _Coverage(ops, x_np, k, init_np, err, init_state, angular)
        picks, radii2, touched, centers = _full_pass_loop(cov, k)
        computed, state = cov.init_dist_computed, (cov.init_mind2, cov.init_nearest)
    counters = {
        "n": len(x_np),
        "init_dist_computed": computed,
        "touched": np.asarray(touched, dtype=np.int64),
        "centers_measured": np.asarray(centers, dtype=np.int64),
        "init_state": state,
    }
    return picks, radii2, counters


class _Coverage:
    """Each point's nearest chosen center (its group) and squared distance, with pruned updates.

    Used by the torch greedy, which adds its own farthest point each step.
    """

    def __init__(
        self,
        ops: Ops,
        x_np: np.ndarray,
        n_new: int,
        init_np: np.ndarray | None,
        err: float,
        init_state: tuple[np.ndarray, np.ndarray] | None = None,
        angular: bool = False,
    ) -> None:
        n, d = x_np.shape
        self.ops, self.n, self.err, self.angular = ops, n, err, angular
        self.x = x = ops.asarray(x_np)
        self.sqx = sqx = (x * x).sum(1)
        self.init_dist_computed = 0
        if init_np is not None:
            init = ops.asarray(init_np)
            if init_state is None:
                mind2, nearest, computed = nearest_init(ops, x, sqx, init)
                self.init_dist_computed = computed
            else:
                mind2, nearest = ops.asarray(init_state[0].copy()), ops.asarray(init_state[1])
            self.init_mind2, self.init_nearest = ops.to_numpy(mind2).copy(), ops.to_numpy(nearest)
            # keep only init points that own candidates: the others can never shrink a group
            used = np.unique(ops.to_numpy(nearest))
            remap = np.full(len(init_np), -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            self.assign = ops.asarray(remap)[nearest]
            self.n_groups = len(used)
            self.centers = ops.zeros((self.n_groups + n_new, d), ops.float_dtype(x))
            self.centers[: self.n_groups] = init[ops.asarray(used)]
        else:
            mind2 = ops.full(n, math.inf, ops.float_dtype(x))
            self.init_mind2, self.init_nearest = None, None
            self.assign = ops.full(n, 0, ops.int_dtype())
            self.n_groups = 0
            self.centers = ops.zeros((n_new, d), ops.float_dtype(x))
        self.mind2 = mind2
        self.sqc = (self.centers * self.centers).sum(1)  # rows past n_groups fill as centers arrive

    def add(self, xs: Any, sqs: Any) -> tuple[int, Any, Any]:
        """Add center ``xs`` (squared norm ``sqs``): returns (points touched, moved indices, old mind2)."""
        ops, x, sqx, mind2, assign, g = self.ops, self.x, self.sqx, self.mind2, self.assign, self.n_groups
        if g == 0:  # no init and first center: every point measures its distance to it
            old = mind2.clone() if hasattr(mind2, "clone") else mind2.copy()
            mind2[:] = ops.clamp0(sqx + sqs - 2.0 * (x @ xs))
            assign[:] = 0
            moved, touched = ops.arange(self.n), self.n
        else:
            # a point with mind2 <= its group's threshold cannot get closer to xs than to its center
            thresh = move_threshold(
                ops, self.sqc[:g] + sqs - 2.0 * (self.centers[:g] @ xs), self.err, self.angular
            )
            cand = ops.nonzero(mind2 > thresh[assign])
            touched = len(cand)
            moved, old = cand[:0], mind2[:0]
            if touched:
                d2 = ops.clamp0(sqx[cand] + sqs - 2.0 * (x[cand] @ xs))
                closer = d2 < mind2[cand]
                moved = cand[closer]
                old = mind2[moved]
                mind2[moved] = d2[closer]
                assign[moved] = g
        self.centers[g] = xs
        self.sqc[g] = sqs
        self.n_groups = g + 1
        return touched, moved, old


def _full_pass_loop(cov: _Coverage, k: int) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Per pick: pruned update, then an argmax over all points (used for torch tensors).

    Returns (picks, squared radii, points and centers measured per pick).
    """
    ops, x, sqx, mind2 = cov.ops, cov.x, cov.sqx, cov.mind2
    picks = np.empty(k, dtype=np.int64)
    radii2 = np.empty(k, dtype=np.float64)
    touched_all: list[int] = []
    centers_all: list[int] = []
    nxt = int(mind2.argmax())
    for i in range(k):
        s = nxt
        picks[i] = s
        centers_all.append(cov.n_groups)
        touched, _, _ = cov.add(x[s], sqx[s])
        cov.assign[s] = cov.n_groups - 1
        mind2[s] = -1.0  # chosen: never picked again, never moves (all distances are >= 0)
        nxt = int(mind2.argmax())
        radii2[i] = max(ops.scalar(mind2[nxt]), 0.0)
        touched_all.append(touched)
        if i % 500 == 499:
            log.info("k-center: %d / %d picks, radius^2 %.5f", i + 1, k, radii2[i])
    return picks, radii2, touched_all, centers_all
