"""Cells of centers for the greedy K-center: a pick reads only the centers near it.

The chosen centers (init points and picks) sit in the cells of a coarse quantiser: about
``CELLS_PER_ROOT * sqrt(m + k)`` representatives drawn by farthest-first from a sample. Each cell bounds how
close a new center must come to its representative to take any point from any of its groups, so a pick
measures the new center against the representatives, then only the centers of the cells that pass, and finds
the next farthest point by an argmax over the cells' maxima. :mod:`mak_ray.kcenter.grouped` drives it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .bounds import metric_distance
from .nearest import BLOCK_ELEMS, nearest_numpy, sqdist

log = logging.getLogger(__name__)

GATHER_FRACTION = 4  # past 1 / this many of the rows (points or centers), one streamed pass beats a gather
CELLS_PER_ROOT = 2  # coarse cells: this x sqrt(number of centers), clipped to [MIN_CELLS, MAX_CELLS]
MIN_CELLS, MAX_CELLS = 16, 8192
REP_SAMPLE = 8  # representatives are chosen from this many sample points each
NEAREST_ROWS = 64  # query rows measured together in ``CenterCells.nearest``
NEAREST_DENSE = 0.5  # ... which measures all candidates at once where blocks would read this share anyway,
NEAREST_DIRECT = 8  # ... or when there are at most this many per cell
RECENT_MIN, RECENT_PER_ROOT = 256, 4  # groups kept outside the cell-sorted list: up to this x sqrt(groups)
_BIG = np.iinfo(np.int64).max


def cell_count(points: int, centers: int) -> int:
    """How many cells for ``centers`` chosen centers among ``points`` points."""
    return min(points, max(MIN_CELLS, min(MAX_CELLS, int(CELLS_PER_ROOT * math.sqrt(centers)))))


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
