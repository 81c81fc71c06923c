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


@pytest.mark.parametrize("kind", ["continuous", "ties", "all_equal"])
@pytest.mark.parametrize("n", [1, 37, 500, 1000])
def test_cut_of_rows_matches_a_full_sort(kind, n):
    """The cut among candidate rows (in any order, as the candidate files hold them) is a full sort's n-th."""
    rng = np.random.default_rng(1)
    m = 1000
    keys = {
        "continuous": rng.normal(size=m),
        "ties": rng.integers(0, 4, m).astype(np.float64),
        "all_equal": np.zeros(m),
    }[kind]
    files = np.repeat(np.arange(10), m // 10)
    rows = np.tile(np.arange(m // 10), 10)
    shuffle = rng.permutation(m)
    c = cut.cut_of_rows(keys[shuffle], files[shuffle], rows[shuffle], n)
    want = np.lexsort((rows, files, -keys))[:n]
    assert sorted(np.flatnonzero(c.mask(keys, files, rows)).tolist()) == sorted(want.tolist())
    with pytest.raises(RuntimeError, match="fewer than the 1001"):
        cut.cut_of_rows(keys, files, rows, m + 1)


def test_sampled_bound_holds_the_top_n_and_not_many_more():
    """Over many samples of one pool, the bound lets through at least n rows and a bounded excess."""
    rng = np.random.default_rng(2)
    keys = rng.normal(size=200_000)
    n, rate = 3000, 0.05
    through = []
    for seed in range(200):
        pick = np.random.default_rng(seed).random(len(keys)) < rate
        bound = cut.sampled_bound(keys[pick], rate, n)
        through.append(int(np.count_nonzero(keys >= bound)))
    # the bound aims SAMPLE_SIGMAS deviations of the sampled count above n: n * SAMPLE_SIGMAS / sqrt(n * rate) rows
    assert min(through) >= n and max(through) < n * (1 + 2 * cut.SAMPLE_SIGMAS / np.sqrt(n * rate))


def test_sampled_bound_of_the_whole_pool_is_the_nth_key_and_refuses_long_ties():
    keys = np.random.default_rng(3).normal(size=1000)
    assert cut.sampled_bound(keys, 1.0, 10) == np.sort(keys)[-10]
    ties = np.repeat([1.0, 2.0], 500)  # the 10th best lies in a run of 500 equal keys
    assert cut.sampled_bound(ties, 1.0, 10) is None
    assert cut.sampled_bound(keys, 0.0, 10) is None  # no sample
    assert cut.sampled_bound(keys[:20], 0.01, 1000) is None  # too few sampled rows for the bound
