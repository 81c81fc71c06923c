"""Exact farthest-first traversal in numpy: group member lists, cells of centers, pruned updates, lazy init.

Groups.  Every point belongs to the group of the chosen center it is
assigned to, with ``mind2`` the squared distance to that center.  When a new
center ``s`` arrives, a point of the group with center ``c`` can only move to
``s`` if it is farther from ``c`` than a threshold set by ``d(c, s)``
(triangle inequality, ``bounds.move_threshold``).  Each group keeps its member
list and its largest ``mind2`` (lowest index on ties), so a pick reads only
the members of groups whose maximum beats their threshold: no per-pick pass
over all N points.

Cells.  Nor is there a per-pick pass over all m + k centers: the centers sit
in the cells of a coarse quantiser (:mod:`mak_ray.kcenter.cells`), so a pick
measures the new center against the cells' representatives, then only the
centers of the cells that pass, and finds the next farthest point by an
argmax over the cells.

Lazy init.  The init set (the target embeddings, often 10^4 points or more)
would cost an N x m distance pass.  Two facts make most of it unnecessary:

- a candidate closer to the init set than the final covering radius is never
  picked and never sets a radius; so every candidate is first measured
  against a seeded random subset of the init points (an upper bound ``ub`` on
  its init distance), and candidates *join* the traversal in decreasing
  order of ``ub``, only once the farthest joined point is no farther than the
  largest waiting bound (``tau``);
- a joined candidate's ``mind2`` only has to be exact when it is the farthest
  point; until then its distance to the subset and to the picks (an upper
  bound, which keeps every pruning test valid) is enough.  When the farthest
  point is still *pending*, it and the other pending points with the largest
  ``mind2`` are measured against the init points of every cell of the init
  set (cells around the subset points) that may hold a closer one.  A joining
  candidate is measured against the picks through the cells of centers.

Every decision compares computed squared distances, as the plain algorithm
does, and every bound keeps a rounding margin, so the picks are exactly those
of the full-recompute algorithm (ties to the lowest index).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ._backend import Ops
from .bounds import metric_distance, move_threshold
from .cells import GATHER_FRACTION, CenterCells, cell_count, coarse_reps, segment_max
from .nearest import nearest_init, nearest_numpy, sqdist

log = logging.getLogger(__name__)

INIT_SUBSET = 1024  # init points every candidate is measured against up front
LAZY_INIT_ABOVE = 4 * INIT_SUBSET  # smaller init sets are measured in full at once
JOIN_FIRST, JOIN_BATCH = 8, 16  # N / these many candidates join first, then per join (at least 1,024)
RESOLVE_BATCH = 512  # pending points measured against the init set together
RESOLVE_ROWS = 64  # rows per GEMM in a resolve (rows sorted by nearest subset point share cells)
_WAITING = -2.0  # mind2 of candidates that have not joined yet; chosen points carry -1
_BIG = np.iinfo(np.int64).max


class Groups:
    """Member index list and exact (max mind2, lowest index at the max) of every group.

    Chosen and waiting points belong to no list.  In the pick loop a point only
    moves to the newest group, so a list only changes when its group is a
    candidate for the new center (then it is rebuilt from the members that
    stayed) or is created; joining and resolving points use ``insert`` and
    ``remove``.  Every change of a group maximum is passed on to ``cells``.
    """

    def __init__(
        self,
        assign: np.ndarray,
        mind2: np.ndarray,
        n_groups: int,
        capacity: int,
        key: np.ndarray,
        cells: CenterCells,
    ) -> None:
        self.key = key  # the index a point is known by outside (ties go to the lowest key)
        self.cells = cells
        free = np.flatnonzero(mind2 >= 0)
        lab = assign[free]
        order = np.argsort(lab, kind="stable")
        lens = np.bincount(lab, minlength=n_groups)
        members = free[order]
        self.members: list[np.ndarray] = list(np.split(members, np.cumsum(lens)[:-1])) if n_groups else []
        self.gmax = np.full(capacity, -np.inf, dtype=mind2.dtype)
        self.gidx = np.full(capacity, _BIG, dtype=np.int64)
        self.glen = np.zeros(capacity, dtype=np.int64)  # len(members[g]), kept in step
        self.glen[:n_groups] = lens
        self.gmax[:n_groups], self.gidx[:n_groups] = segment_max(mind2[members], key[members], lens)
        self.mark = np.zeros(len(mind2), dtype=bool)
        if n_groups:
            cells.raised(np.arange(n_groups), self.gmax, self.gidx)

    def farthest(self) -> tuple[int, float]:
        """(lowest key among the points with the largest mind2, that mind2); (-1, -inf) if none."""
        return self.cells.farthest(self.gmax, self.gidx)

    def insert(self, pts: np.ndarray, gids: np.ndarray, d2: np.ndarray, n_groups: int) -> None:
        """Add points ``pts`` to groups ``gids`` with mind2 ``d2``."""
        while len(self.members) < n_groups:
            self.members.append(np.empty(0, dtype=np.int64))
        order = np.argsort(gids, kind="stable")
        gs, pts = gids[order], pts[order]
        uniq, starts = np.unique(gs, return_index=True)
        ends = np.append(starts[1:], len(gs))
        nm, ni = segment_max(d2[order], self.key[pts], ends - starts)
        for gid, a, b in zip(uniq.tolist(), starts.tolist(), ends.tolist()):
            self.members[gid] = np.concatenate([self.members[gid], pts[a:b]])
        self.glen[uniq] += ends - starts
        old, oi = self.gmax[uniq], self.gidx[uniq]
        self.gmax[uniq] = np.maximum(old, nm)
        self.gidx[uniq] = np.where(nm > old, ni, np.where(nm == old, np.minimum(oi, ni), oi))
        self.cells.raised(uniq, self.gmax, self.gidx)

    def remove(self, pts: np.ndarray, gids: np.ndarray, mind2: np.ndarray) -> None:
        """Take points ``pts`` out of their groups ``gids``; those groups get a new list and maximum."""
        ug = np.unique(gids)
        lens = self.glen[ug]
        idx = np.concatenate([self.members[g] for g in ug.tolist()])
        self.mark[pts] = True
        keep = ~self.mark[idx]
        self.mark[pts] = False
        new_lens = np.add.reduceat(keep.astype(np.int64), np.cumsum(lens) - lens)  # every list held a point
        sub = idx[keep]
        self.gmax[ug], self.gidx[ug] = segment_max(mind2[sub], self.key[sub], new_lens)
        self.glen[ug] = new_lens
        ends = np.cumsum(new_lens)
        for g, a, b in zip(ug.tolist(), (ends - new_lens).tolist(), ends.tolist()):
            self.members[g] = sub[a:b].copy()
        self.cells.lowered(ug, self.gmax)


class GroupedGreedy:
    """One farthest-first traversal over prepared points ``x`` (see the module docstring)."""

    def __init__(
        self,
        x: np.ndarray,
        k: int,
        init: np.ndarray | None,
        err: float,
        *,
        angular: bool,
        init_state: tuple[np.ndarray, np.ndarray] | None = None,
        lazy_init: bool = True,
    ) -> None:
        n, d = x.shape
        m = 0 if init is None else len(init)
        self.x, self.sqx, self.n, self.err, self.angular = x, (x * x).sum(1), n, err, angular
        self.centers = np.zeros((m + k, d), dtype=x.dtype)
        self.is_pick = np.zeros(m + k, dtype=bool)  # groups whose center is a picked candidate
        self.sqc = np.zeros(m + k, dtype=x.dtype)
        self.n_groups = 0
        self.init_computed = 0
        self.pending: np.ndarray | None = None
        self.init_state: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        self.groups: Groups | None = None
        self.orig = self.inv = np.arange(n)  # position <-> index of the caller's point
        n_cells = cell_count(n + m, m + k)
        self.cells = CenterCells(coarse_reps(x, init, n_cells), m + k, err, angular)
        if init is None:
            self.mind2 = np.full(n, math.inf, dtype=x.dtype)
            self.assign = np.zeros(n, dtype=np.int64)
            return
        self.init, self.sqi = init, (init * init).sum(1)
        self.init_group = np.full(m, -1, dtype=np.int64)  # group of each init point that has one
        if init_state is None and lazy_init and m > LAZY_INIT_ABOVE:
            sub = np.sort(np.random.default_rng(0).choice(m, INIT_SUBSET, replace=False))
            self._new_init_groups(sub)
            ub, j = nearest_numpy(x, self.sqx, init[sub], self.sqi[sub])
            self._reorder(np.argsort(j, kind="stable"))
            self.ub, self.ub_group = ub[self.orig], self.init_group[sub][j[self.orig]]
            self.sub = sub
            self._make_cells(sub)
            self.init_computed = n * len(sub)
            self.order = np.argsort(-self.ub, kind="stable")  # joining order
            self.joined = 0
            self.mind2 = np.full(n, _WAITING, dtype=x.dtype)
            self.assign = np.full(n, -1, dtype=np.int64)
            self.pending = np.zeros(n, dtype=bool)
            self._join(max(1024, n // JOIN_FIRST))
            return
        if init_state is None and lazy_init:
            mind2, nearest = nearest_numpy(x, self.sqx, init, self.sqi)
            self.init_computed = n * m
        elif init_state is None:  # the caller reuses this state elsewhere: torch's block-independent GEMM
            mind2, nearest, self.init_computed = nearest_init(Ops(), x, self.sqx, init)
        else:
            mind2, nearest = init_state
        self.init_state = (np.array(mind2), np.array(nearest))
        used = np.unique(nearest)  # init points that own no candidate never shrink a group
        self._new_init_groups(used)
        self._reorder(np.argsort(nearest, kind="stable"))
        self.mind2 = np.array(mind2, dtype=x.dtype)[self.orig]
        self.assign = self.init_group[np.asarray(nearest)[self.orig]]

    def _reorder(self, perm: np.ndarray) -> None:
        """Store the points in order ``perm`` (neighbours next to each other): a pick gathers
        the rows of the groups it may change, and neighbouring rows stream ~5x faster than
        scattered ones.  Picks and ties still use the caller's indices (``orig``)."""
        self.orig = perm
        self.inv = np.empty_like(perm)
        self.inv[perm] = np.arange(len(perm))
        self.x, self.sqx = np.ascontiguousarray(self.x[perm]), self.sqx[perm]

    # ------------------------------------------------------------------ lazy init

    def _new_init_groups(self, init_idx: np.ndarray) -> None:
        """Init points ``init_idx`` (distinct, without a group yet) become the next groups."""
        gids = self.n_groups + np.arange(len(init_idx))
        self.init_group[init_idx] = gids
        self.centers[gids] = self.init[init_idx]
        self.sqc[gids] = self.sqi[init_idx]
        self.cells.add(gids, self.centers[gids], self.sqc[gids])
        self.n_groups += len(init_idx)

    def _make_cells(self, sub: np.ndarray) -> None:
        """Cells of the init set around the subset points, with radii, for pruned resolves."""
        d2, cell = nearest_numpy(self.init, self.sqi, self.init[sub], self.sqi[sub])
        members = np.argsort(cell, kind="stable")  # init points stored cell after cell
        self.cell_init, self.cell_sqi, self.cell_index = self.init[members], self.sqi[members], members
        self.cell_bounds = np.searchsorted(cell[members], np.arange(len(sub) + 1))
        self.cell_radius = np.zeros(len(sub))
        np.maximum.at(self.cell_radius, cell, metric_distance(d2 + self.err, self.angular))  # upper bounds

    @property
    def tau(self) -> float:
        """Largest bound among the candidates still waiting to join (-inf when none)."""
        return float(self.ub[self.order[self.joined]]) if self.joined < self.n else -math.inf

    def _join(self, count: int) -> None:
        """The next ``count`` waiting candidates join: bound = nearest of (init subset, picks so far).

        The picks are searched through the cells, so that a late join does not
        measure every joining candidate against every pick.
        """
        new = np.sort(self.order[self.joined : self.joined + count])
        self.joined = min(self.n, self.joined + count)
        d2, gid = self.ub[new].copy(), self.ub_group[new].copy()
        picks = self.is_pick[: self.n_groups].nonzero()[0]
        dp, jp = self.cells.nearest(self.x[new], self.sqx[new], d2, self.centers, self.sqc, picks)
        closer = jp >= 0
        d2[closer], gid[closer] = dp[closer], jp[closer]
        self.mind2[new], self.assign[new] = d2, gid
        self.pending[new] = True
        if self.groups is not None:
            self.groups.insert(new, gid, d2, self.n_groups)

    def _resolve(self, first: int) -> None:
        """Make ``first`` and the pending points with the largest mind2 exact over the init set.

        A cell (init points nearest to one subset point ``p``, radius ``r``) can
        only hold an init point closer to ``x`` than ``mind2`` if
        ``d(x, p) - r < d(x, its center)``; the other cells are skipped.  Rows are
        sorted by their nearest subset point so that a GEMM's rows need the same cells.
        """
        pend = np.flatnonzero(self.pending)
        if len(pend) > RESOLVE_BATCH:
            top = pend[np.argpartition(-self.mind2[pend], RESOLVE_BATCH - 1)[:RESOLVE_BATCH]]
            pend = np.union1d(top, [first])
        self.pending[pend] = False
        sub, err = self.sub, self.err
        d2s = sqdist(self.x[pend], self.sqx[pend], self.init[sub], self.sqi[sub])
        own = metric_distance(self.mind2[pend] + 2.0 * err, self.angular)
        need = metric_distance(d2s - err, self.angular) - self.cell_radius[None, :] < own[:, None]
        # rows that need most cells: one GEMM against the whole init set; the others in
        # small GEMMs of rows that share their nearest subset point (and so their cells)
        wide = 2 * need.sum(axis=1) > len(sub)
        order = np.lexsort((d2s.argmin(axis=1), ~wide))
        pend, need, wide = pend[order], need[order], wide[order]
        best = self.mind2[pend].copy()
        arg = np.full(len(pend), -1, dtype=np.int64)
        n_wide = int(wide.sum())
        if n_wide:
            w, j = nearest_numpy(self.x[pend[:n_wide]], self.sqx[pend[:n_wide]], self.init, self.sqi)
            self.init_computed += n_wide * len(self.init)
            better = w < best[:n_wide]
            best[:n_wide][better], arg[:n_wide][better] = w[better], j[better]
        for a in range(n_wide, len(pend), RESOLVE_ROWS):
            rows, nd = pend[a : a + RESOLVE_ROWS], need[a : a + RESOLVE_ROWS]
            cells = np.flatnonzero(nd.any(axis=0))
            if len(cells) == 0:
                continue
            # every computed distance is real, so a row may also meet the other rows' cells
            starts, lens = self.cell_bounds[cells], np.diff(self.cell_bounds)[cells]
            cols = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
            d2 = sqdist(self.x[rows], self.sqx[rows], self.cell_init[cols], self.cell_sqi[cols])
            self.init_computed += d2.size
            j = d2.argmin(axis=1)
            w = d2[np.arange(len(rows)), j]
            better = w < best[a : a + RESOLVE_ROWS]
            best[a : a + RESOLVE_ROWS][better] = w[better]
            arg[a : a + RESOLVE_ROWS][better] = self.cell_index[cols[j[better]]]
        closer = arg >= 0
        if not closer.any():
            return
        pts, j = pend[closer], arg[closer]
        self._new_init_groups(np.unique(j[self.init_group[j] < 0]))
        old, new = self.assign[pts], self.init_group[j]
        self.mind2[pts], self.assign[pts] = best[closer], new
        assert self.groups is not None
        self.groups.remove(pts, old, self.mind2)
        self.groups.insert(pts, new, self.mind2[pts], self.n_groups)

    def _settle(self, nxt: int, v: float) -> tuple[int, float]:
        """Join and resolve until the farthest joined point is exact and beats every waiting bound."""
        assert self.groups is not None
        while self.pending is not None:
            if v <= self.tau + 2.0 * self.err:  # a waiting point's exact distance may round 2 err above ub
                self._join(max(1024, self.n // JOIN_BATCH))
            elif nxt >= 0 and self.pending[self.inv[nxt]]:
                self._resolve(self.inv[nxt])
            else:
                break
            nxt, v = self.groups.farthest()
        return nxt, v

    # ------------------------------------------------------------------ traversal

    def run(self, k: int) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        """``(picks, squared radius after each pick, points and centers measured per pick)``.

        The traversal's BLAS calls run on one thread: they are small (a product over a few thousand rows per
        pick), so waking BLAS threads costs more than it saves, and on a busy machine the threads' spinning
        takes the cores that other work needs.  The up-front passes over all candidates keep every thread.
        """
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return self._traverse(k)

    def _traverse(self, k: int) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        x, sqx, mind2 = self.x, self.sqx, self.mind2
        picks = np.empty(k, dtype=np.int64)
        radii2 = np.empty(k, dtype=np.float64)
        touched_all: list[int] = []
        centers_all: list[int] = []
        i0 = 0
        if self.n_groups == 0:  # no init: the first pick is index 0, measured against every point
            picks[0] = 0
            self.centers[0], self.sqc[0], self.is_pick[0] = x[0], sqx[0], True
            self.cells.add(np.array([0]), x[:1], sqx[:1])
            mind2[:] = np.maximum(sqx + sqx[0] - 2.0 * (x @ x[0]), 0.0)
            mind2[0] = -1.0
            self.n_groups = 1
            touched_all.append(self.n)
            centers_all.append(0)
            i0 = 1
        self.groups = grp = Groups(
            self.assign, mind2, self.n_groups, len(self.centers), self.orig, self.cells
        )
        nxt, v = self._settle(*grp.farthest())
        if i0:
            radii2[0] = max(v, 0.0)
        for i in range(i0, k):
            picks[i] = nxt
            touched, measured = self._add_center(int(self.inv[nxt]))
            nxt, v = self._settle(*grp.farthest())
            radii2[i] = max(v, 0.0)
            touched_all.append(touched)
            centers_all.append(measured)
            if i % 500 == 499:
                log.info("k-center: %d / %d picks, radius^2 %.5f", i + 1, k, radii2[i])
        return picks, radii2, touched_all, centers_all

    def _add_center(self, s: int) -> tuple[int, int]:
        """The point at position ``s`` becomes the center of a new group and takes the points closer to it.

        Only the groups of ``cells.near`` are tested, each against its exact
        threshold; only their members above it are measured.  Returns (points,
        centers) measured against the new center.
        """
        x, sqx, mind2, assign, orig, cells = self.x, self.sqx, self.mind2, self.assign, self.orig, self.cells
        assert self.groups is not None
        members, gmax, gidx, glen = self.groups.members, self.groups.gmax, self.groups.gidx, self.groups.glen
        g = self.n_groups
        xs, sqs = x[s], sqx[s]
        a = int(assign[s])
        members[a] = members[a][members[a] != s]
        glen[a] -= 1
        gmax[a] = np.inf  # force a rebuild of s's old group
        cells.force(a)
        mind2[s] = -1.0
        assign[s] = g
        near, cell_s, d2_cell_s = cells.near(xs, sqs)
        if len(near) > g // GATHER_FRACTION:
            cdots = (self.centers[:g] @ xs)[near]
        else:
            cdots = self.centers.take(near, 0) @ xs
        thresh = move_threshold(_NP, self.sqc[near] + sqs - 2.0 * cdots, self.err, self.angular)
        hit = (gmax[near] > thresh).nonzero()[0]
        hit = hit[near[hit].argsort()]  # in group order, so that the points keep one order
        cg, thresh = near[hit], thresh[hit]
        lens = glen[cg]
        idx = np.concatenate([members[j] for j in cg.tolist()]) if len(cg) else np.empty(0, dtype=np.int64)
        test = (mind2[idx] > thresh.repeat(lens)).nonzero()[0]
        cand = idx[test]
        moved, moved_pos = cand[:0], test[:0]
        if len(cand):
            # past n / GATHER_FRACTION rows, one streamed pass beats a gather
            dots = (x @ xs)[cand] if len(cand) > self.n // GATHER_FRACTION else x.take(cand, 0) @ xs
            d2 = np.maximum(sqx[cand] + sqs - 2.0 * dots, 0.0)
            closer = d2 < mind2[cand]
            moved, moved_pos = cand[closer], test[closer]
            mind2[moved] = d2[closer]
            assign[moved] = g
        # only the groups that lost members (and s's old group) get a new list and maximum;
        # copies, so that no list keeps a whole batch alive
        ends = lens.cumsum()
        lost = np.bincount(ends.searchsorted(moved_pos, side="right"), minlength=len(cg))
        changed = lost > 0
        changed[cg == a] = True
        keep = changed.repeat(lens)
        keep[moved_pos] = False
        sub = idx[keep]
        ch = changed.nonzero()[0]
        new_lens = (lens - lost)[ch]
        chg = cg[ch]
        gmax[chg], gidx[chg] = segment_max(mind2[sub], orig[sub], new_lens)
        glen[chg] = new_lens
        start = 0
        for j, end in zip(chg.tolist(), new_lens.cumsum().tolist()):
            members[j] = sub[start:end].copy()
            start = end
        moved.sort()
        members.append(moved)
        glen[g] = len(moved)
        if len(moved):
            vals = mind2[moved]
            gmax[g] = vals.max()
            gidx[g] = orig[moved[vals == gmax[g]]].min()
        self.centers[g], self.sqc[g], self.is_pick[g] = xs, sqs, True
        self.n_groups = g + 1
        cells.picked(g, cell_s, d2_cell_s, chg, gmax, gidx)
        return len(cand), len(near)


_NP = Ops()
