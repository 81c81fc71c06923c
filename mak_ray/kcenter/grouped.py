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
in the cells of a coarse quantiser (``CenterCells``: about
``CELLS_PER_ROOT * sqrt(m + k)`` representatives drawn by farthest-first from
a sample), and each cell bounds how close a new center must come to its
representative to take any point from any of its groups.  A pick measures the
new center against the representatives, then only the centers of the cells
that pass, and finds the next farthest point by an argmax over the cells.

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
from .nearest import BLOCK_ELEMS, nearest_init, nearest_numpy, sqdist

log = logging.getLogger(__name__)

INIT_SUBSET = 1024  # init points every candidate is measured against up front
LAZY_INIT_ABOVE = 4 * INIT_SUBSET  # smaller init sets are measured in full at once
JOIN_FIRST, JOIN_BATCH = 8, 16  # N / these many candidates join first, then per join (at least 1,024)
RESOLVE_BATCH = 512  # pending points measured against the init set together
RESOLVE_ROWS = 64  # rows per GEMM in a resolve (rows sorted by nearest subset point share cells)
GATHER_FRACTION = 4  # past 1 / this many of the rows (points or centers), one streamed pass beats a gather
CELLS_PER_ROOT = 2  # coarse cells: this x sqrt(number of centers), clipped to [MIN_CELLS, MAX_CELLS]
MIN_CELLS, MAX_CELLS = 16, 8192
REP_SAMPLE = 8  # representatives are chosen from this many sample points each
NEAREST_ROWS = 64  # query rows measured together in ``CenterCells.nearest``
NEAREST_DENSE = 0.5  # ... which measures all candidates at once where blocks would read this share anyway,
NEAREST_DIRECT = 8  # ... or when there are at most this many per cell
RECENT_MIN, RECENT_PER_ROOT = 256, 4  # groups kept outside the cell-sorted list: up to this x sqrt(groups)
_WAITING = -2.0  # mind2 of candidates that have not joined yet; chosen points carry -1
_BIG = np.iinfo(np.int64).max


def segment_max(vals: np.ndarray, idx: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive segment (lengths ``lens``): max of ``vals`` and the lowest ``idx`` attaining it.

    Empty segments get (-inf, n/a) so they never win the global argmax.
    """
    gmax = np.full(len(lens), -np.inf, dtype=vals.dtype)
    gidx = np.full(len(lens), _BIG, dtype=np.int64)
    full = lens > 0
    if not full.any():
        return gmax, gidx
    starts = (lens.cumsum() - lens)[full]
    segmax = np.maximum.reduceat(vals, starts)
    at_max = vals == segmax.repeat(lens[full])
    gmax[full] = segmax
    gidx[full] = np.minimum.reduceat(np.where(at_max, idx, _BIG), starts)
    return gmax, gidx


def coarse_reps(x: np.ndarray, init: np.ndarray | None, count: int, seed: int = 0) -> np.ndarray:
    """``count`` representatives: farthest-first over a seeded random sample of the candidates and init.

    Farthest-first, because the centers the cells will hold are themselves
    farthest-first picks (plus init points): its representatives spread like
    them, which keeps the cells small.
    """
    m = 0 if init is None else len(init)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(x) + m, min(len(x) + m, REP_SAMPLE * count), replace=False))
    cut = int(np.searchsorted(take, len(x)))
    sample = x[take[:cut]] if cut == len(take) else np.concatenate([x[take[:cut]], init[take[cut:] - len(x)]])
    sq = (sample * sample).sum(1)
    mind = np.full(len(sample), np.inf, dtype=sample.dtype)
    chosen = np.empty(min(count, len(sample)), dtype=np.int64)
    s = 0
    for i in range(len(chosen)):
        chosen[i] = s
        np.minimum(mind, sq + sq[s] - 2.0 * (sample @ sample[s]), out=mind)
        mind[s] = -np.inf  # chosen points stay at -inf
        s = int(mind.argmax())
    return np.ascontiguousarray(sample[chosen])


class CenterCells:
    """Centers (groups) sorted into the cells of a coarse quantiser, so that a pick reads only its neighbours.

    A center c belongs to the cell of its nearest representative ``p`` and
    keeps ``dcp``, an upper bound on ``d(c, p)``.  Its group can only lose
    points to a new center s if its largest mind2 beats ``move_threshold`` at
    ``d(c, s)``; that threshold grows with the distance, so the group is safe
    once ``d(c, s)`` reaches ``reach(largest mind2)``.  As ``d(c, s) >= d(s, p)
    - dcp``, it is safe once ``d(s, p) >= reach + dcp``, i.e. once the
    squared distance from s to p reaches the group's ``key2`` (that bound as a
    squared distance, rounding margins included).  A cell keeps the largest
    key2 of its groups and (largest mind2, lowest point key at it) over them.
    A pick measures s against the representatives, reads the groups of the
    cells whose key2 beats it and keeps those whose own key2 does; the
    farthest point is an argmax over the cells.  Per pick, the work outside
    the cells read is O(number of cells), about sqrt(m + k), not O(m + k).
    Distances are the metric's (angles on the unit sphere), so the triangle
    inequality holds.

    Cell bounds may be stale upper bounds: a group that loses points marks its
    cell stale, ``farthest`` makes stale cells exact only when they reach the
    top (a lazy max-heap), and ``near`` recomputes the key2 of the cells it
    reads.  Cell membership is a list sorted by cell (offsets ``cstart``) plus
    the groups placed since the last sort, re-sorted when those grow past a
    few times the square root of the number of groups.
    """

    def __init__(self, reps: np.ndarray, capacity: int, err: float, angular: bool) -> None:
        self.reps, self.sqr = reps, (reps * reps).sum(1).astype(np.float64)
        self.err, self.angular = err, angular
        n_cells = len(reps)
        self.ckey2 = np.full(n_cells, -np.inf)  # largest key2 of the cell's groups (an upper bound)
        self.cmax = np.full(n_cells, -np.inf)  # largest group maximum (an upper bound when stale) ...
        self.cidx = np.full(n_cells, _BIG, dtype=np.int64)  # ... and the lowest point key at it
        self.stale = np.zeros(n_cells, dtype=bool)
        self.cell_of = np.full(capacity, -1, dtype=np.int64)
        self.dcp = np.zeros(capacity)
        self.rho = np.zeros(n_cells)  # largest dcp in the cell
        self.key2 = np.full(capacity, -np.inf)
        self.sorted = np.empty(capacity, dtype=np.int64)
        self.cstart = np.zeros(n_cells + 1, dtype=np.int64)
        self.n_sorted = self.n_placed = 0
        self.recent_cap = RECENT_MIN
        self.mark = np.zeros(n_cells, dtype=bool)

    def reach(self, gmax: np.ndarray) -> np.ndarray:
        """Distance from a group's center beyond which a new center cannot take its points.

        ``move_threshold(y) >= gmax + err`` for every computed squared
        distance ``y`` whose true distance is at least the reach (one err of
        slack for evaluating the threshold in the working precision).
        Angular: with ``u = gmax + 3 err`` (the chord^2 of the angle m a member
        may have from c), the threshold needs angle(c, s) / 2 >= m, i.e.
        ``sin^2(reach / 2) >= sin^2(m) + err / 2 = u (1 - u / 4) + err / 2``
        (the threshold's own margins take two err).  Chordal: ``reach^2 - 2 err
        >= (2 sqrt(gmax + 2 err) + sqrt(2 err))^2``.  -inf for an empty group.
        """
        g = np.asarray(gmax, dtype=np.float64)
        err = self.err
        if self.angular:
            u = g + 3.0 * err
            s2 = u * (1.0 - u / 4.0) + err / 2.0
            out = np.where(
                (u < 2.0) & (s2 < 1.0), 2.0 * np.arcsin(np.sqrt(np.minimum(np.maximum(s2, 0.0), 1.0))), np.inf
            )
        else:
            root = 2.0 * np.sqrt(np.maximum(g, 0.0) + 2.0 * err) + math.sqrt(2.0 * err)
            out = np.sqrt(root * root + 2.0 * err)
        out[g < 0] = -np.inf
        return out

    def _set_keys(self, gids: np.ndarray, gmax: np.ndarray) -> None:
        """key2 of groups ``gids``: the squared distance of ``reach + dcp``, rounded up."""
        dist = self.reach(gmax[gids]) + self.dcp[gids]
        if self.angular:  # an angle of pi or more is no bound at all
            half = np.minimum(np.maximum(dist, 0.0), math.pi) / 2.0
            k2 = np.where(dist < math.pi, 4.0 * np.sin(half) ** 2, np.inf)
        else:
            k2 = dist * dist
        k2 *= 1.0 + 1e-12
        k2[dist == -np.inf] = -np.inf
        self.key2[gids] = k2

    def add(self, gids: np.ndarray, centers: np.ndarray, sqc: np.ndarray) -> None:
        """New groups ``gids`` with these centers join the cells of their nearest representatives."""
        d2, cell = nearest_numpy(centers, sqc, self.reps, self.sqr.astype(centers.dtype))
        self.place(gids, cell, d2)

    def place(self, gids: np.ndarray, cell: np.ndarray, d2: np.ndarray) -> None:
        """New groups ``gids`` (the next ids) join cells ``cell``; ``d2``: computed squared distances to
        their representatives.  Their key2 stays -inf until ``raised``."""
        if len(gids) == 0:
            return
        self.cell_of[gids] = cell
        self.dcp[gids] = metric_distance(d2 + self.err, self.angular)
        np.maximum.at(self.rho, cell, self.dcp[gids])
        self.n_placed = int(gids.max()) + 1
        if self.n_placed - self.n_sorted > self.recent_cap:  # re-sort: amortised O(log) per group
            order = np.argsort(self.cell_of[: self.n_placed], kind="stable")
            self.sorted[: self.n_placed] = order
            self.cstart[:] = np.searchsorted(self.cell_of[order], np.arange(len(self.cstart)))
            self.n_sorted = self.n_placed
            self.recent_cap = max(RECENT_MIN, int(RECENT_PER_ROOT * math.sqrt(self.n_placed)))

    def _members(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Groups of ``cells``: (the cell-sorted ones, their count per cell, the recent ones)."""
        starts, lens = self.cstart[cells], self.cstart[cells + 1] - self.cstart[cells]
        pos = (starts - (lens.cumsum() - lens)).repeat(lens) + np.arange(lens.sum())
        recent = np.arange(self.n_sorted, self.n_placed)
        self.mark[cells] = True
        recent = recent[self.mark[self.cell_of[recent]]]
        self.mark[cells] = False
        return self.sorted[pos], lens, recent

    def near(self, xs: np.ndarray, sqs: float) -> tuple[np.ndarray, int, float]:
        """(groups that may lose points to a new center ``xs``, xs's nearest cell, d2 to its rep).

        The cells read get their exact largest key2 back.
        """
        d2 = self.sqr + float(sqs) - 2.0 * (self.reps @ xs)
        q = int(d2.argmin())
        low = d2 - self.err  # below the true squared distance from s to each representative
        cells = (self.ckey2 > low).nonzero()[0]
        srt, lens, recent = self._members(cells)
        k2, rk2 = self.key2[srt], self.key2[recent]
        ck = np.empty(len(cells))
        ck.fill(-np.inf)
        full = lens > 0
        if full.any():
            ck[full] = np.maximum.reduceat(k2, (lens.cumsum() - lens)[full])
        self.ckey2[cells] = ck
        rcell = self.cell_of[recent]
        np.maximum.at(self.ckey2, rcell, rk2)
        groups = np.concatenate([srt[k2 > low[cells].repeat(lens)], recent[rk2 > low[rcell]]])
        return groups, q, float(d2[q])

    def nearest(
        self,
        xq: np.ndarray,
        sqq: np.ndarray,
        best2: np.ndarray,
        centers: np.ndarray,
        sqc: np.ndarray,
        among: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query row's nearest center among groups ``among``, where one is closer than ``best2``.

        Returns (squared distance, group); rows with none closer get
        (``best2``, -1).  A cell can only hold such a center if ``d(x, p) -
        rho < d`` with d the distance of ``best2``.  Rows are taken in blocks
        that share a nearest representative, and each block is measured
        against the centers of the cells any of its rows needs; where the
        blocks would read more than ``NEAREST_DENSE`` of ``among`` anyway, or
        ``among`` is small, the rows are measured against all of it in one GEMM.
        """
        best2 = np.array(best2, dtype=np.float64)
        gid = np.full(len(xq), -1, dtype=np.int64)
        if len(among) == 0 or len(xq) == 0:
            return best2, gid
        if len(among) <= NEAREST_DIRECT * len(self.reps):  # a GEMM beats sorting rows into cells
            self._closer(xq, sqq, np.arange(len(xq)), among, centers, sqc, best2, gid)
            return best2, gid
        allowed = np.zeros(self.n_placed, dtype=bool)
        allowed[among] = True
        per_cell = np.bincount(self.cell_of[among], minlength=len(self.reps))
        step = max(NEAREST_ROWS, BLOCK_ELEMS // (8 * len(self.reps)) // NEAREST_ROWS * NEAREST_ROWS)
        for a in range(0, len(xq), step):
            d2r = sqdist(xq[a : a + step], sqq[a : a + step], self.reps, self.sqr)
            lower = metric_distance(d2r - self.err, self.angular) - self.rho[None, :]
            need = lower < metric_distance(best2[a : a + step] + self.err, self.angular)[:, None]
            order = d2r.argmin(axis=1).argsort(kind="stable")
            pad = -len(order) % NEAREST_ROWS
            blocks = np.concatenate([need[order], np.zeros((pad, need.shape[1]), dtype=bool)])
            blocks = blocks.reshape(-1, NEAREST_ROWS, need.shape[1]).any(axis=1)  # cells per block
            rows_all = a + np.arange(len(order))
            if (blocks @ per_cell).sum() > NEAREST_DENSE * len(blocks) * len(among):
                self._closer(xq, sqq, rows_all, among, centers, sqc, best2, gid)
                continue
            for b, cells in enumerate(blocks):
                cells = cells.nonzero()[0]
                if len(cells):
                    srt, _, recent = self._members(cells)
                    mem = np.concatenate([srt, recent])
                    rows = a + order[b * NEAREST_ROWS : (b + 1) * NEAREST_ROWS]
                    self._closer(xq, sqq, rows, mem[allowed[mem]], centers, sqc, best2, gid)
        return best2, gid

    @staticmethod
    def _closer(
        xq: np.ndarray,
        sqq: np.ndarray,
        rows: np.ndarray,
        mem: np.ndarray,
        centers: np.ndarray,
        sqc: np.ndarray,
        best2: np.ndarray,
        gid: np.ndarray,
    ) -> None:
        """Rows ``rows`` take their nearest of centers ``mem`` where it is closer than ``best2``."""
        if len(mem) == 0:
            return
        v, j = nearest_numpy(xq[rows], sqq[rows], centers.take(mem, 0), sqc[mem])
        closer = v < best2[rows]
        best2[rows[closer]], gid[rows[closer]] = v[closer], mem[j[closer]]

    def _exact(self, q: int, gmax: np.ndarray, gidx: np.ndarray) -> None:
        """Recompute the bounds of cell ``q`` from its groups."""
        mem = self.sorted[self.cstart[q] : self.cstart[q + 1]]
        if self.n_placed > self.n_sorted:
            recent = np.arange(self.n_sorted, self.n_placed)
            mem = np.concatenate([mem, recent[self.cell_of[recent] == q]])
        vals = gmax[mem]
        v = vals.max()
        self.cmax[q], self.cidx[q] = v, gidx[mem[vals == v]].min()
        self.ckey2[q] = self.key2[mem].max()
        self.stale[q] = False

    def raised(self, gids: np.ndarray, gmax: np.ndarray, gidx: np.ndarray) -> None:
        """Groups ``gids`` are new or their maxima grew: new keys, exact bounds for their cells."""
        self._set_keys(gids, gmax)
        cells = np.unique(self.cell_of[gids])
        srt, _, recent = self._members(cells)
        mem = np.concatenate([srt, recent])
        cm = self.cell_of[mem]
        vals = gmax[mem].astype(np.float64)
        self.ckey2[cells] = self.cmax[cells] = -np.inf
        self.cidx[cells] = _BIG
        np.maximum.at(self.ckey2, cm, self.key2[mem])
        np.maximum.at(self.cmax, cm, vals)
        at = vals == self.cmax[cm]
        np.minimum.at(self.cidx, cm[at], gidx[mem[at]])
        self.stale[cells] = False

    def lowered(self, gids: np.ndarray, gmax: np.ndarray) -> None:
        """Groups ``gids`` lost points: new keys; their cells' bounds stay valid upper bounds."""
        self._set_keys(gids, gmax)
        self.stale[self.cell_of[gids]] = True

    def picked(
        self, g: int, cell: int, d2: float, lowered: np.ndarray, gmax: np.ndarray, gidx: np.ndarray
    ) -> None:
        """After a pick: new group ``g`` joins ``cell`` (its center at squared distance ``d2`` from the
        representative) and groups ``lowered`` lost points; one call, as it runs once per pick."""
        self.place(np.array([g]), np.array([cell]), np.array([d2]))
        self._set_keys(np.concatenate([lowered, [g]]), gmax)
        self.stale[self.cell_of[lowered]] = True
        self.ckey2[cell] = max(self.ckey2[cell], self.key2[g])
        v = float(gmax[g])
        if v > self.cmax[cell]:  # beats an upper bound: the exact maximum
            self.cmax[cell], self.cidx[cell], self.stale[cell] = v, gidx[g], False
        elif v == self.cmax[cell] and not self.stale[cell]:
            self.cidx[cell] = min(self.cidx[cell], gidx[g])

    def force(self, gid: int) -> None:
        """Make the next ``near`` return group ``gid``."""
        self.key2[gid] = np.inf
        self.ckey2[self.cell_of[gid]] = np.inf

    def farthest(self, gmax: np.ndarray, gidx: np.ndarray) -> tuple[int, float]:
        """(lowest key among the points with the largest mind2, that mind2); (-1, -inf) if none."""
        cmax = self.cmax
        while True:
            q = int(cmax.argmax())
            v = cmax[q]
            if v == -np.inf:
                return -1, -math.inf
            if self.stale[q]:
                self._exact(q, gmax, gidx)
                continue
            top = (cmax == v).nonzero()[0]
            if len(top) == 1:
                return int(self.cidx[q]), float(v)
            stale = top[self.stale[top]]
            if len(stale) == 0:
                return int(self.cidx[top].min()), float(v)
            for t in stale.tolist():
                self._exact(t, gmax, gidx)


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
        n_cells = min(n + m, max(MIN_CELLS, min(MAX_CELLS, int(CELLS_PER_ROOT * math.sqrt(m + k)))))
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
        """``(picks, squared radius after each pick, points and centers measured per pick)``."""
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
