"""Where the top ``n`` rows of a pool end: estimated from a sample, or found from mergeable histograms, exactly.

Usually a uniform sample of the keys (from the stats pass) gives a bound ``lo`` with, with overwhelming
probability, at least ``n`` rows at or above it and not many more (:func:`sampled_bound`); the candidates pass
writes every row at or above it, the stage checks that they are at least ``n``, and the exact cut is the
``n``-th of the candidates in the order (key descending, file, row) (:func:`cut_of_rows`). Otherwise (a sample
too small or crowded with ties, or too few rows written) the driver narrows a key interval ``[lo, hi)`` that holds the ``n``-th best key: ``above`` rows have a key of
at least ``hi``, and histogram passes over the interval move it into the bin where the count crosses ``n``,
until that bin holds few enough rows to be sent to the driver (``BOUNDARY_ROWS``) or all its keys are equal.
The final :class:`Cut` is then a position in the order (key descending, file, row): a row is a candidate when
it sorts at or before the cut. Memory in the driver is O(bins + boundary rows), whatever the pool size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mak_ray.select.passes import Boundary, Histogram

BINS = 4096
BOUNDARY_ROWS = 1 << 20
SAMPLE_ROWS = 1 << 16  # the stats pass's sample of the pool, whatever its size
SAMPLE_SIGMAS = (
    5.0  # how far the sampled bound lies below the estimated n-th key, in binomial standard deviations
)
MAX_CANDIDATES = 2.0  # a sampled bound whose ties let through this many times the rows it aims at is not used


@dataclass
class Interval:
    """``above`` rows lie at or above ``hi``; the ``need``-th best of the rest lies in ``[lo, hi)``."""

    lo: float
    hi: float
    above: int
    n: int
    equal_keys: bool = False  # every row in [lo, hi) has the same key, ``key``
    count: int | None = None  # rows in [lo, hi), once a histogram has counted them
    key: float | None = None

    @property
    def need(self) -> int:
        return self.n - self.above

    @property
    def settled(self) -> bool:
        return self.need <= 0 or self.equal_keys or (self.count is not None and self.count <= BOUNDARY_ROWS)

    def edges(self, bins: int = BINS) -> np.ndarray:
        edges = np.linspace(self.lo, self.hi, bins + 1)
        edges[0], edges[-1] = self.lo, self.hi
        edges = np.unique(edges)  # a very narrow interval has fewer distinct edges
        return edges if len(edges) >= 2 else np.array([self.lo, self.hi])

    def narrow(self, hist: Histogram, edges: np.ndarray) -> Interval:
        """The bin of ``hist`` (over ``edges``, inside this interval) where the ``need``-th best key lies."""
        if self.need <= 0:
            return self
        above = self.above
        for b in range(len(hist.counts) - 1, -1, -1):
            c = int(hist.counts[b])
            if above + c >= self.n:
                equal = c > 0 and hist.low[b] == hist.high[b]
                key = float(hist.low[b]) if equal else None
                return Interval(float(edges[b]), float(edges[b + 1]), above, self.n, equal, c, key)
            above += c
        raise ValueError(f"the pool has {above} rows with a key, fewer than the {self.n} asked for")


def first_interval(key_min: float, key_max: float, n: int) -> Interval:
    """The whole key range (``key_max`` included)."""
    return Interval(float(key_min), float(np.nextafter(key_max, np.inf)), 0, n)


@dataclass(frozen=True)
class Cut:
    """The last candidate's (key, file, row); ``None`` fields: every row at or above ``min_key`` is in."""

    min_key: float
    key: float | None = None
    file: int | None = None
    row: int | None = None

    def mask(self, keys: np.ndarray, files: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which rows sort at or before the cut (key descending, then file, then row)."""
        if self.key is None:
            return keys >= self.min_key
        at = (keys == self.key) & ((files < self.file) | ((files == self.file) & (rows <= self.row)))
        return (keys > self.key) | at


def cut_from_rows(interval: Interval, boundaries: list[Boundary]) -> Cut:
    """The exact cut from every task's boundary rows (key, file, row)."""
    if interval.need <= 0:
        return Cut(min_key=interval.hi)
    keys = np.concatenate([b.keys for b in boundaries])
    files = np.concatenate([b.files for b in boundaries])
    rows = np.concatenate([b.rows for b in boundaries])
    if len(keys) < interval.need:
        raise RuntimeError(f"the boundary holds {len(keys)} rows, fewer than the {interval.need} needed")
    order = np.lexsort((rows, files, -keys))
    last = order[interval.need - 1]
    return Cut(min_key=interval.lo, key=float(keys[last]), file=int(files[last]), row=int(rows[last]))


def cut_file_from_counts(interval: Interval, boundaries: list[Boundary]) -> tuple[int, int]:
    """For a boundary of equal keys: the file holding the ``need``-th boundary row, and that row's rank in the
    file (1-based), from every task's per-file counts (``Boundary.files``, ``Boundary.rows`` = counts)."""
    files, where = np.unique(np.concatenate([b.files for b in boundaries]), return_inverse=True)
    counts = np.bincount(where, weights=np.concatenate([b.rows for b in boundaries])).astype(np.int64)
    cum = np.cumsum(counts)
    at = int(np.searchsorted(cum, interval.need))  # first file where the running count reaches need
    if at >= len(files):
        raise RuntimeError(f"the boundary holds {int(cum[-1]) if len(cum) else 0} rows, fewer than needed")
    before = int(cum[at - 1]) if at else 0
    return int(files[at]), interval.need - before


def sampled_bound(keys: np.ndarray, rate: float, n: int) -> float | None:
    """A key bound with at least ``n`` rows of the pool at or above it, from the keys of a uniform sample of the
    pool (each row drawn with probability ``rate``), or None where the sample cannot give a useful one.

    The bound is the sample's ``r``-th largest key, ``r`` = ``SAMPLE_SIGMAS`` binomial standard deviations above
    the ``n * rate`` sample rows expected among the pool's top ``n``: the pool then has fewer than ``n`` rows at or
    above it only with a probability below 1e-6 (and the stage checks the count). A whole-pool sample
    (``rate`` = 1) gives the exact ``n``-th key.
    """
    if rate <= 0 or n <= 0 or not len(keys):
        return None
    if rate >= 1:
        r = n
    else:
        mean = n * rate
        r = max(1, math.ceil(mean + SAMPLE_SIGMAS * math.sqrt(mean * (1 - rate))) + 1)
    if r > len(keys):
        return None
    bound = float(np.partition(keys, len(keys) - r)[len(keys) - r])
    if np.count_nonzero(keys >= bound) > MAX_CANDIDATES * r:  # a bound inside a long run of equal keys
        return None
    return bound


def cut_of_rows(keys: np.ndarray, files: np.ndarray, rows: np.ndarray, n: int) -> Cut:
    """The cut at the ``n``-th row in the order (key descending, file, row), among rows that hold the top ``n``."""
    if len(keys) < n:
        raise RuntimeError(f"the candidates hold {len(keys)} rows, fewer than the {n} needed")
    if n <= 0:
        return Cut(min_key=np.inf)
    value = np.partition(keys, len(keys) - n)[len(keys) - n]  # the n-th largest key (no sort of every row)
    tied = np.flatnonzero(keys == value)
    last = tied[np.lexsort((rows[tied], files[tied]))[n - int(np.count_nonzero(keys > value)) - 1]]
    return Cut(min_key=float(value), key=float(value), file=int(files[last]), row=int(rows[last]))
