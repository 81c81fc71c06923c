"""The exact cut of the top ``n`` from mergeable histograms, against a plain sort."""

from __future__ import annotations

import numpy as np
import pytest

from mak_ray.select import cut
from mak_ray.select.passes import Boundary, Histogram


def _cut_by_passes(keys: np.ndarray, files: np.ndarray, rows: np.ndarray, n: int, parts: int):
    """What the stage does, in process: histogram rounds over ``parts`` pieces, then the boundary."""
    pieces = np.array_split(np.arange(len(keys)), parts)
    iv = cut.first_interval(keys.min(), keys.max(), n)
    rounds = 0
    while not iv.settled:
        rounds += 1
        edges = iv.edges()
        hist = None
        for p in pieces:
            h = Histogram.of(keys[p], edges)
            hist = h if hist is None else hist.merge(h)
        iv = iv.narrow(hist, edges)
    bounds = []
    for p in pieces:
        k, f, r = keys[p], files[p], rows[p]
        edge = (k >= iv.lo) & (k < iv.hi)
        if iv.equal_keys:
            uniq, counts = np.unique(f[edge], return_counts=True)
            bounds.append(Boundary(np.zeros(0), uniq, counts, 0))
        else:
            bounds.append(Boundary(k[edge], f[edge], r[edge], 0))
    if iv.equal_keys and iv.need > 0:
        file_index, rank = cut.cut_file_from_counts(iv, bounds)
        in_file = np.sort(rows[(files == file_index) & (keys >= iv.lo) & (keys < iv.hi)])
        c = cut.Cut(min_key=iv.lo, key=iv.key, file=file_index, row=int(in_file[rank - 1]))
    else:
        c = cut.cut_from_rows(iv, bounds)
    return c, rounds


@pytest.mark.parametrize("kind", ["continuous", "dense_cluster", "ties", "all_equal"])
@pytest.mark.parametrize("n", [1, 37, 500, 999, 1000])
def test_cut_matches_a_full_sort(kind, n, monkeypatch):
    rng = np.random.default_rng(0)
    m = 1000
    if kind == "continuous":
        keys = rng.normal(size=m)
    elif kind == "dense_cluster":  # most keys inside one bin of the first histogram: forces refinement
        keys = np.concatenate([rng.normal(size=50), 3.0 + rng.uniform(0, 1e-9, m - 50)])
    elif kind == "ties":
        keys = rng.integers(0, 4, m).astype(np.float64)
    else:
        keys = np.zeros(m)
    files = np.repeat(np.arange(10), m // 10)
    rows = np.tile(np.arange(m // 10), 10)
    monkeypatch.setattr(cut, "BOUNDARY_ROWS", 20)
    c, rounds = _cut_by_passes(keys, files, rows, n, parts=7)
    want = np.lexsort((rows, files, -keys))[:n]
    got = np.flatnonzero(c.mask(keys, files, rows))
    assert sorted(got.tolist()) == sorted(want.tolist())
    if kind == "dense_cluster" and n < 950:  # the cut lies inside the cluster
        assert rounds >= 2


def test_too_few_rows_is_an_error():
    iv = cut.first_interval(0.0, 1.0, 5)
    edges = iv.edges()
    with pytest.raises(ValueError, match="fewer than the 5"):
        iv.narrow(Histogram.of(np.array([0.5, 0.7]), edges), edges)
