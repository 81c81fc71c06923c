"""Exact greedy K-center (farthest-first traversal) with triangle-inequality pruning.

Every point keeps its nearest chosen center (its *group*) and the squared
distance to it.  When a new center ``s`` arrives, a point ``x`` of the group
with center ``c`` can only move to ``s`` if ``d(c, s) < 2 d(x, c)`` (triangle
inequality), so one cheap comparison against a per-group threshold rules out
most points and only the rest are read from memory.  With numpy, each group
also keeps its member list and its largest distance (lowest index on ties),
so a pick reads only the members of groups that pass the test and finds the
next farthest point among the group maxima: no per-pick pass over all N
points (torch keeps a full argmax per pick).  The nearest-init pass
(N x |init| distances, the other big cost) runs as chunked GEMMs, one per
block with the squared norms folded in as an extra column, then one argmin
pass (see ``_nearest_brute``); an optional pruned variant groups init points around
farthest-first pivots and scans a group for a point only if its lower bound
``d(x, pivot) - radius`` can beat the best distance so far.  Both prunings keep a floating-point safety margin, so the picks are
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

from ._backend import Ops, get_ops
from .validate import as_float_array, check_k, check_metric, check_nonzero_rows, check_same_dim

log = logging.getLogger(__name__)

_CHUNK_ELEMS = 4_000_000  # largest temporary distance block, in elements
_BRUTE_INIT_BELOW = 512  # below this many init points a plain chunked GEMM is cheapest


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


def greedy_k_center(
    candidates: Any,
    k: int,
    init: Any = None,
    *,
    metric: str = "cosine",
    backend: str = "numpy",
    device: str = "cpu",
    stats: dict[str, Any] | None = None,
    init_pass: str = "gemm",
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first traversal: ``(indices in pick order, radius after each pick)``.

    ``init`` [m, D] holds already chosen points (e.g. the target embeddings):
    they cover candidates but are never picked.  The radius after a pick is the
    largest distance from any candidate to its nearest chosen point (init or
    picked).  Ties go to the lowest index.  Memory is O((N + m + k) * D) plus
    fixed-size blocks; no N x k or N x m matrix is built.  ``backend`` is
    ``numpy`` or ``torch``; ``device='cuda'`` implies torch.  If ``stats`` is a
    dict it receives counters (points touched per pick, init distances
    computed) for benchmarks.  ``init_pass`` chooses how the nearest init
    point is found (``gemm`` or ``pruned``, see ``nearest_init``); both are exact.
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
    ops = get_ops(backend, device)
    picks, d2s, counters = _farthest_first(ops, x_np, k, init_np, init_pass)
    if stats is not None:
        stats.update(counters)
    return picks, to_radius(d2s, metric)


def _error_margin(x: np.ndarray, init: np.ndarray | None) -> float:
    """Bound on the absolute error of a computed squared distance |x|^2 + |c|^2 - 2 x.c."""
    d = x.shape[1]
    unit = float(np.finfo(x.dtype).eps)
    maxsq = float((x * x).sum(1).max())
    if init is not None:
        maxsq = max(maxsq, float((init * init).sum(1).max()))
    return 4.0 * (d + 4) * unit * 2.0 * maxsq + 1e-30


class _Coverage:
    """Each point's nearest chosen center (its group) and squared distance, with pruned updates.

    Shared by the greedy (which adds its own farthest point) and by ``replay_excess``
    (which adds given centers in a given order), so both prune and round alike.
    """

    def __init__(
        self,
        ops: Ops,
        x_np: np.ndarray,
        n_new: int,
        init_np: np.ndarray | None,
        err: float,
        init_pass: str = "gemm",
        init_state: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        n, d = x_np.shape
        self.ops, self.n, self.err = ops, n, err
        self.x = x = ops.asarray(x_np)
        self.sqx = sqx = (x * x).sum(1)
        self.init_dist_computed = 0
        if init_np is not None:
            init = ops.asarray(init_np)
            if init_state is None:
                mind2, nearest, computed = nearest_init(ops, x, sqx, init, err, init_pass)
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
        self.sqrt_2err = math.sqrt(2.0 * err)
        self.neg_inf = ops.full(1, -math.inf, ops.float_dtype(x))  # mind2's dtype: no upcast per pick

    def add(self, xs: Any, sqs: Any) -> tuple[int, Any, Any]:
        """Add center ``xs`` (squared norm ``sqs``): returns (points touched, moved indices, old mind2)."""
        ops, x, sqx, mind2, assign, g = self.ops, self.x, self.sqx, self.mind2, self.assign, self.n_groups
        if g == 0:  # no init and first center: every point measures its distance to it
            old = mind2.clone() if hasattr(mind2, "clone") else mind2.copy()
            mind2[:] = ops.clamp0(sqx + sqs - 2.0 * (x @ xs))
            assign[:] = 0
            moved, touched = ops.arange(self.n), self.n
        else:
            # squared distance from every group center to xs, then the per-group threshold T:
            # a point with mind2 <= T cannot get closer to xs than to its own center
            err, sqrt_2err = self.err, self.sqrt_2err
            dcs = ops.sqrt(ops.clamp0(self.sqc[:g] + sqs - 2.0 * (self.centers[:g] @ xs) - err))
            half = ops.clamp0((dcs - sqrt_2err) / 2.0)
            thresh = ops.where(dcs > sqrt_2err, half * half - err, self.neg_inf)
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


def _farthest_first(
    ops: Ops,
    x_np: np.ndarray,
    k: int,
    init_np: np.ndarray | None,
    init_pass: str = "gemm",
    init_state: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    cov = _Coverage(ops, x_np, k, init_np, _error_margin(x_np, init_np), init_pass, init_state)
    counters: dict[str, Any] = {"n": cov.n, "init_dist_computed": cov.init_dist_computed, "touched": []}
    if isinstance(cov.mind2, np.ndarray):
        picks, radii2, touched = _grouped_loop(cov, k)
    else:  # torch: one full pass per pick (argmax and threshold mask over all points)
        picks, radii2, touched = _full_pass_loop(cov, k)
    counters["touched"] = np.asarray(touched, dtype=np.int64)
    counters["init_state"] = (cov.init_mind2, cov.init_nearest)
    return picks, radii2, counters


def _full_pass_loop(cov: _Coverage, k: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per pick: pruned update, then an argmax over all points (used for torch tensors)."""
    ops, x, sqx, mind2 = cov.ops, cov.x, cov.sqx, cov.mind2
    picks = np.empty(k, dtype=np.int64)
    radii2 = np.empty(k, dtype=np.float64)
    touched_all: list[int] = []
    nxt = int(mind2.argmax())
    for i in range(k):
        s = nxt
        picks[i] = s
        touched, _, _ = cov.add(x[s], sqx[s])
        cov.assign[s] = cov.n_groups - 1
        mind2[s] = -1.0  # chosen: never picked again, never moves (all distances are >= 0)
        nxt = int(mind2.argmax())
        radii2[i] = max(ops.scalar(mind2[nxt]), 0.0)
        touched_all.append(touched)
        if i % 500 == 499:
            log.info("k-center: %d / %d picks, radius^2 %.5f", i + 1, k, radii2[i])
    return picks, radii2, touched_all


def _clamp0(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0, out=v)


def _segment_max(vals: np.ndarray, idx: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive segment (lengths ``lens``): max of ``vals`` and the lowest ``idx`` attaining it.

    Empty segments get (-inf, n/a) so they never win the global argmax.
    """
    gmax = np.full(len(lens), -np.inf, dtype=vals.dtype)
    gidx = np.full(len(lens), np.iinfo(np.int64).max, dtype=np.int64)
    full = lens > 0
    if not full.any():
        return gmax, gidx
    starts = (np.cumsum(lens) - lens)[full]
    segmax = np.maximum.reduceat(vals, starts)
    at_max = vals == np.repeat(segmax, lens[full])
    gmax[full] = segmax
    gidx[full] = np.minimum.reduceat(np.where(at_max, idx, np.iinfo(np.int64).max), starts)
    return gmax, gidx


class _Groups:
    """Member index list and exact (max mind2, lowest index at the max) of every group.

    Chosen points belong to no list.  A point only ever moves to the newest
    group, so a list only changes when its group is a candidate for the new
    center (then it is rebuilt from the members that stayed) or is created.
    """

    def __init__(self, assign: np.ndarray, mind2: np.ndarray, n_groups: int, capacity: int) -> None:
        free = np.flatnonzero(mind2 >= 0)  # chosen points carry -1
        lab = assign[free]
        order = np.argsort(lab, kind="stable")
        lens = np.bincount(lab, minlength=n_groups)
        members = free[order]
        self.members: list[np.ndarray] = list(np.split(members, np.cumsum(lens)[:-1])) if n_groups else []
        self.gmax = np.full(capacity, -np.inf, dtype=mind2.dtype)
        self.gidx = np.full(capacity, np.iinfo(np.int64).max, dtype=np.int64)
        self.gmax[:n_groups], self.gidx[:n_groups] = _segment_max(mind2[members], members, lens)

    def farthest(self, n_groups: int) -> tuple[int, float]:
        """(lowest index among the points with the largest mind2, that mind2); (-1, -inf) if none."""
        gm = self.gmax[:n_groups]
        v = gm.max()
        if v == -np.inf:
            return -1, -math.inf
        return int(self.gidx[:n_groups][gm == v].min()), float(v)


def _grouped_loop(cov: _Coverage, k: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Farthest-first where each pick reads only the candidate groups' members (numpy).

    Same tests and arithmetic as ``_Coverage.add``: a group is a candidate for
    the new center only if its largest mind2 beats its threshold, so groups
    ruled out as a whole are never read; the next pick is the argmax over the
    group maxima (ties to the lowest index, like a full argmax).
    """
    x, sqx, mind2, assign, err = cov.x, cov.sqx, cov.mind2, cov.assign, cov.err
    picks = np.empty(k, dtype=np.int64)
    radii2 = np.empty(k, dtype=np.float64)
    touched_all: list[int] = []
    big = np.iinfo(np.int64).max
    i0 = 0
    if cov.n_groups == 0:  # no init: the first center is measured against every point
        s = int(mind2.argmax())
        picks[0] = s
        touched_all.append(cov.add(x[s], sqx[s])[0])
        assign[s] = 0
        mind2[s] = -1.0
        i0 = 1
    grp = _Groups(assign, mind2, cov.n_groups, cov.n_groups + k)
    members, gmax, gidx = grp.members, grp.gmax, grp.gidx
    if i0:
        nxt, v = grp.farthest(cov.n_groups)
        radii2[0] = max(v, 0.0)
    else:
        nxt = int(mind2.argmax())
    sqrt_2err = cov.sqrt_2err
    for i in range(i0, k):
        s = nxt
        picks[i] = s
        g = cov.n_groups
        xs, sqs = x[s], sqx[s]
        a = int(assign[s])
        members[a] = members[a][members[a] != s]
        gmax[a] = np.inf  # force a rebuild of s's old group
        mind2[s] = -1.0
        assign[s] = g
        dcs = np.sqrt(_clamp0(cov.sqc[:g] + sqs - 2.0 * (cov.centers[:g] @ xs) - err))
        half = _clamp0((dcs - sqrt_2err) / 2.0)
        thresh = np.where(dcs > sqrt_2err, half * half - err, cov.neg_inf)
        cg = np.flatnonzero(gmax[:g] > thresh)
        lists = [members[j] for j in cg.tolist()]
        lens = np.fromiter((len(m) for m in lists), dtype=np.int64, count=len(lists))
        idx = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
        test = np.flatnonzero(mind2[idx] > np.repeat(thresh[cg], lens))
        cand = idx[test]
        touched = len(cand)
        moved, moved_pos = cand[:0], test[:0]
        if touched:
            d2 = _clamp0(sqx[cand] + sqs - 2.0 * (x[cand] @ xs))
            closer = d2 < mind2[cand]
            moved, moved_pos = cand[closer], test[closer]
            mind2[moved] = d2[closer]
            assign[moved] = g
        # only the groups that lost members (and s's old group) get a new list and maximum;
        # copies, so that no list keeps a whole batch alive
        ends = np.cumsum(lens)
        lost = np.bincount(np.searchsorted(ends, moved_pos, side="right"), minlength=len(cg))
        changed = lost > 0
        changed[cg == a] = True
        keep = np.repeat(changed, lens)
        keep[moved_pos] = False
        sub = idx[keep]
        ch = np.flatnonzero(changed)
        new_lens = (lens - lost)[ch]
        chg = cg[ch]
        gmax[chg], gidx[chg] = _segment_max(mind2[sub], sub, new_lens)
        start = 0
        for j, end in zip(chg.tolist(), np.cumsum(new_lens).tolist()):
            members[j] = sub[start:end].copy()
            start = end
        moved = np.sort(moved)
        members.append(moved)
        if len(moved):
            new_max, new_idx = _segment_max(mind2[moved], moved, np.array([len(moved)]))
            gmax[g], gidx[g] = new_max[0], new_idx[0]
        else:
            gmax[g], gidx[g] = -np.inf, big
        cov.centers[g] = xs
        cov.sqc[g] = sqs
        cov.n_groups = g + 1
        nxt, v = grp.farthest(g + 1)
        radii2[i] = max(v, 0.0)
        touched_all.append(touched)
        if i % 500 == 499:
            log.info("k-center: %d / %d picks, radius^2 %.5f", i + 1, k, radii2[i])
    return picks, radii2, touched_all


def greedy_with_init_state(
    x_np: np.ndarray,
    k: int,
    init_np: np.ndarray | None,
    init_state: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray | None, np.ndarray | None]]:
    """Greedy on prepared points: (picks, squared working radii, (init mind2, nearest init)).

    For the two-stage driver: the nearest-init state is returned so a later
    ``replay_excess`` over the same points skips the init pass, and can be
    passed back in (``init_state``) to skip it here.
    """
    picks, radii2, counters = _farthest_first(Ops(), x_np, k, init_np, "gemm", init_state)
    return picks, radii2, counters["init_state"]


def replay_excess(
    x_np: np.ndarray,
    init_np: np.ndarray | None,
    init_state: tuple[np.ndarray, np.ndarray] | None,
    centers_np: np.ndarray,
    profile2: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """How far the points of ``x`` exceed a greedy radius profile when its centers are replayed.

    ``centers_np`` [k, D] are added in order (pruned like the greedy) on top of
    ``init``; ``profile2[i]`` is the squared radius the greedy claimed after i
    centers (i = 0..k).  Returns (excess per point: max over i of its squared
    distance to init + the first i centers minus ``profile2[i]``, the largest
    final squared distance, the rounding margin).  A point's distance is
    constant between the steps that move it, and the profile never increases,
    so each constant stretch only needs checking at its last step: the work is
    O(moved points) on top of the pruned replay.
    """
    err = _error_margin(x_np, centers_np if init_np is None else np.vstack([init_np, centers_np]))
    ops = Ops()
    cov = _Coverage(ops, x_np, len(centers_np), init_np, err, "gemm", init_state)
    excess = np.full(cov.n, -np.inf)
    sqc = (centers_np * centers_np).sum(1)
    for i in range(len(centers_np)):
        _, moved, old = cov.add(centers_np[i], sqc[i])
        if len(moved) and np.isfinite(profile2[i]):
            excess[moved] = np.maximum(excess[moved], old - profile2[i])  # moved is unique
    mind2 = cov.mind2
    np.maximum(excess, mind2 - profile2[len(centers_np)], out=excess)
    return excess, float(mind2.max()), 4.0 * err


# --------------------------------------------------------------------------- nearest init point


def nearest_init(
    ops: Ops, x: Any, sqx: Any, init: Any, err: float, mode: str = "gemm"
) -> tuple[Any, Any, int]:
    """Exact squared distance and index of each candidate's nearest init point.

    ``mode='gemm'``: chunked matrix products with a running minimum (default:
    measured fastest on clustered 128-d data, where the pivot bounds still had
    to compute ~60% of all pairs).  ``mode='pruned'``: pivot-group bounds,
    worth it only when the init set is tightly clustered.
    Returns (mind2, nearest, number of candidate-init distances computed).
    """
    m = init.shape[0]
    sqi = (init * init).sum(1)
    if mode not in ("gemm", "pruned"):
        raise ValueError(f"init_pass must be 'gemm' or 'pruned', got {mode!r}")
    if mode == "gemm" or m < _BRUTE_INIT_BELOW:
        mind2, nearest = _nearest_brute(ops, x, sqx, init, sqi)
        return mind2, nearest, x.shape[0] * m
    return _nearest_pruned(ops, x, sqx, init, sqi, err)


def _nearest_brute(ops: Ops, x: Any, sqx: Any, init: Any, sqi: Any) -> tuple[Any, Any]:
    """Chunked exact nearest init point: one GEMM and one argmin pass per block.

    ``[x, 1] . [-2 c, |c|^2]`` gives ``|c|^2 - 2 x.c`` straight out of the GEMM
    (scaling by -2 is exact), so the only pass over the block after the GEMM is
    the row argmin; on CPU that argmin runs in numpy, whose SIMD argmin is
    ~6x faster than torch's ``min(dim)`` with indices.  The GEMM runs in torch
    (MKL/oneDNN, bitwise the same for any thread count and block split,
    checked) in blocks of ``_CHUNK_ELEMS * 4`` elements.
    """
    import torch

    n, m = x.shape[0], init.shape[0]
    on_cpu = not isinstance(x, torch.Tensor) or x.device.type == "cpu"
    xt = torch.as_tensor(x)
    it = torch.as_tensor(init)
    aug = torch.cat([it * -2.0, torch.as_tensor(sqi)[:, None]], dim=1).T.contiguous()  # [D+1, m]
    step = max(1, min(n, (4 * _CHUNK_ELEMS) // max(m, 1)))
    buf = torch.empty(step, m, dtype=xt.dtype, device=xt.device)
    xa = torch.ones(step, xt.shape[1] + 1, dtype=xt.dtype, device=xt.device)
    vals_all = torch.empty(n, dtype=xt.dtype, device=xt.device)
    idx_all = torch.empty(n, dtype=torch.int64, device=xt.device)
    for a in range(0, n, step):
        b = min(n, a + step)
        blk, xb = buf[: b - a], xa[: b - a]
        xb[:, :-1] = xt[a:b]
        torch.mm(xb, aug, out=blk)
        if on_cpu:
            blk_np = blk.numpy()
            idx = blk_np.argmin(axis=1)
            idx_all[a:b] = torch.from_numpy(idx)
            vals_all[a:b] = torch.from_numpy(blk_np[np.arange(b - a), idx])
        else:
            vals_all[a:b], idx_all[a:b] = blk.min(dim=1)
    if isinstance(x, np.ndarray):
        vals, nearest = vals_all.numpy(), idx_all.numpy()
    else:
        vals, nearest = vals_all, idx_all
    return ops.clamp0(vals + sqx), nearest


def _farthest_pivots(ops: Ops, pts: Any, sqp: Any, q: int) -> Any:
    """q pivot indices by plain farthest-first over ``pts`` (starting at 0)."""
    m = pts.shape[0]
    mind = ops.full(m, math.inf, ops.float_dtype(pts))
    piv = np.empty(q, dtype=np.int64)
    cur = 0
    for j in range(q):
        piv[j] = cur
        d2 = ops.clamp0(sqp + sqp[cur] - 2.0 * (pts @ pts[cur]))
        mind = ops.where(d2 < mind, d2, mind)
        cur = int(mind.argmax())
    return piv


def _nearest_pruned(ops: Ops, x: Any, sqx: Any, init: Any, sqi: Any, err: float) -> tuple[Any, Any, int]:
    """Nearest init point with the init set grouped around farthest-first pivots.

    For a candidate x and an init group with pivot p and radius rho, every
    member y satisfies d(x, y) >= d(x, p) - rho; the group is skipped when that
    bound (less a rounding margin) is no better than the best distance found.
    """
    n, m = x.shape[0], init.shape[0]
    q = int(min(256, max(8, 2 * math.sqrt(m))))
    piv = ops.asarray(_farthest_pivots(ops, init, sqi, q))
    pivots, sqpiv = init[piv], sqi[piv]
    # group every init point with its nearest pivot; sort so groups are contiguous
    lab_d2, lab = _nearest_brute(ops, init, sqi, pivots, sqpiv)
    lab_np = ops.to_numpy(lab)
    order_np = np.argsort(lab_np, kind="stable")
    bounds = np.searchsorted(lab_np[order_np], np.arange(q + 1))
    order = ops.asarray(order_np)
    members, sqm = init[order], sqi[order]
    rho_np = np.zeros(q)
    lab_d_np = np.sqrt(np.maximum(ops.to_numpy(lab_d2).astype(np.float64), 0.0))
    np.maximum.at(rho_np, lab_np, lab_d_np)
    margin = 3.0 * math.sqrt(err)  # distance error from rounding in d, rho and the best value
    rho = ops.asarray(rho_np.astype(ops.to_numpy(sqx[:1]).dtype) + margin)

    mind2 = ops.empty(n, ops.float_dtype(x))
    nearest = ops.empty(n, ops.int_dtype())
    computed = 0
    step = max(1, _CHUNK_ELEMS // 256)
    for a in range(0, n, step):
        b = min(n, a + step)
        xa, sqa = x[a:b], sqx[a:b]
        dp2 = ops.clamp0(sqa[:, None] + sqpiv[None, :] - 2.0 * (xa @ pivots.T))  # [rows, q]
        lower = ops.sqrt(dp2) - rho[None, :]
        best, best_grp = ops.row_min(dp2)  # pivots are init points: a first upper bound
        best_idx = piv[best_grp]
        # visit groups nearest pivot first per row is costly; instead visit groups in order of
        # their median lower bound so that upper bounds tighten early for most rows
        lower_np = ops.to_numpy(lower)
        visit = np.argsort(np.median(lower_np, axis=0), kind="stable")
        for g in visit.tolist():
            lo, hi = bounds[g], bounds[g + 1]
            if hi == lo:
                continue
            rows = ops.nonzero(lower[:, g] < ops.sqrt(best))
            if len(rows) == 0:
                continue
            blk = xa[rows] @ members[lo:hi].T
            blk *= -2.0
            blk += sqm[lo:hi][None, :]
            vals, idx = ops.row_min(blk)
            vals = ops.clamp0(vals + sqa[rows])
            computed += len(rows) * (hi - lo)
            better = vals < best[rows]
            upd = rows[better]
            best[upd] = vals[better]
            best_idx[upd] = order[lo + idx[better]]
        mind2[a:b] = best
        nearest[a:b] = best_idx
    return mind2, nearest, computed + n * q
