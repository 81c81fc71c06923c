"""Greedy and two-stage K-center against the obvious full-recompute implementation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mak_ray.kcenter import greedy_k_center, grouped, nearest


def ref_dist_matrix(a: np.ndarray, c: np.ndarray, metric: str) -> np.ndarray:
    """[len(a), len(c)] distances straight from the definitions (float64)."""
    if metric == "cosine":
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        return 1.0 - an @ cn.T
    return np.sqrt(((a[:, None, :] - c[None, :, :]) ** 2).sum(-1))


def ref_greedy(x: np.ndarray, k: int, init: np.ndarray | None, metric: str) -> tuple[list[int], list[float]]:
    """Plain farthest-first: recompute every candidate's distance to every chosen point at each pick."""
    x = x.astype(np.float64)
    chosen = np.empty((0, x.shape[1])) if init is None else init.astype(np.float64)
    picks, radii = [], []
    for _ in range(k):
        mind = ref_dist_matrix(x, chosen, metric).min(1) if len(chosen) else np.full(len(x), np.inf)
        mind[picks] = -np.inf
        s = int(np.argmax(mind))  # first maximum: ties to the lowest index
        picks.append(s)
        chosen = np.vstack([chosen, x[s : s + 1]])
        radii.append(max(float(ref_dist_matrix(x, chosen, metric).min(1).max()), 0.0))
    return picks, radii


def covering_radius(x, centers, metric) -> float:
    return float(
        ref_dist_matrix(x.astype(np.float64), np.asarray(centers, dtype=np.float64), metric).min(1).max()
    )


@pytest.fixture
def small_lazy_init(monkeypatch):
    """Lazy init from 2,048 init points on (a 512-point subset), so that small tests exercise it."""
    monkeypatch.setattr(grouped, "INIT_SUBSET", 512)
    monkeypatch.setattr(grouped, "LAZY_INIT_ABOVE", 2048)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("n_init", [0, 40, 600, 2500])  # 2500 > LAZY_INIT_ABOVE: lazy init on numpy
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_greedy_matches_full_recompute(metric, n_init, backend, small_lazy_init):
    rng = np.random.default_rng(n_init + len(metric))
    centers = rng.normal(size=(6, 5)) * 3
    x = centers[rng.integers(0, 6, 400)] + rng.normal(size=(400, 5))
    init = centers[rng.integers(0, 6, n_init)] + rng.normal(size=(n_init, 5)) if n_init else None
    picks, radii = greedy_k_center(x, 30, init, metric=metric, backend=backend)
    want_p, want_r = ref_greedy(x, 30, init, metric)
    assert picks.tolist() == want_p
    np.testing.assert_allclose(radii, want_r, rtol=1e-9, atol=1e-9)


def test_greedy_float32_matches_reference_and_is_deterministic():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(800, 16)).astype(np.float32)
    init = rng.normal(size=(700, 16)).astype(np.float32)
    stats: dict = {}
    picks, radii = greedy_k_center(x, 50, init, stats=stats)
    assert picks.tolist() == ref_greedy(x, 50, init, "cosine")[0]
    assert np.array_equal(picks, greedy_k_center(x, 50, init, backend="torch")[0])
    assert np.array_equal(picks, greedy_k_center(x, 50, init)[0])
    assert len(stats["touched"]) == 50 and stats["touched"].max() <= 800


def test_pruning_skips_points_on_clustered_data():
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(40, 8)) * 10
    x = centers[rng.integers(0, 40, 1500)] + 0.1 * rng.normal(size=(1500, 8))
    stats: dict = {}
    picks, _ = greedy_k_center(x, 120, metric="euclidean", stats=stats)
    assert picks.tolist() == ref_greedy(x, 120, None, "euclidean")[0]
    assert stats["touched"][50:].mean() < 0.2 * len(x)  # the triangle inequality prunes most points


@pytest.mark.parametrize("with_init", [False, True])
def test_grouped_loop_matches_full_pass_loop_over_many_picks(with_init):
    """numpy keeps per-group member lists and maxima; torch still argmaxes all points each pick."""
    rng = np.random.default_rng(31)
    centers = rng.normal(size=(30, 12)) * 4
    x = centers[rng.integers(0, 30, 3000)] + rng.normal(size=(3000, 12))
    init = x[rng.choice(3000, 50, replace=False)] + 0.1 if with_init else None
    stats: dict = {}
    picks, radii = greedy_k_center(x, 400, init, metric="euclidean", stats=stats)
    want_p, want_r = greedy_k_center(x, 400, init, metric="euclidean", backend="torch")
    assert picks.tolist() == want_p.tolist()
    np.testing.assert_allclose(radii, want_r, rtol=1e-9)
    assert stats["touched"][100:].mean() < 0.2 * len(x)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_lazy_init_joins_and_resolves_like_the_eager_init(metric, monkeypatch, small_lazy_init):
    """Candidates far from a big init set: several joins and resolves, same picks as the eager path.

    The eager torch path measures every candidate against every init point and
    is itself checked against ``ref_greedy`` above.
    """
    monkeypatch.setattr(grouped, "RESOLVE_BATCH", 16)  # many small resolves
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(20, 8)) * 3
    x = (centers[rng.integers(0, 20, 6000)] + rng.normal(size=(6000, 8))).astype(np.float32)
    # the init set covers half the modes
    init = (centers[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 8))).astype(np.float32)
    stats: dict = {}
    picks, radii = greedy_k_center(x, 150, init, metric=metric, stats=stats)
    want_p, want_r = greedy_k_center(x, 150, init, metric=metric, backend="torch")
    assert picks.tolist() == want_p.tolist()
    np.testing.assert_allclose(radii, want_r, rtol=1e-5, atol=1e-6)
    # most candidates never met the whole init set
    assert stats["init_dist_computed"] < 0.8 * len(x) * len(init)


def test_angular_bound_keeps_antipodal_points_exact():
    """On the sphere the angular threshold is up to 2x the chordal one; near-antipodal centers test its edge."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2000, 4))
    x[:1000] *= 1e-3
    x[:1000, 0] += 1.0  # a tight cap around e0 ...
    x[1000:1010] = -x[:10]  # ... and its antipodes
    init = np.vstack([np.eye(4)[:1], rng.normal(size=(5, 4))])
    picks, radii = greedy_k_center(x, 60, init, metric="cosine")
    want_p, want_r = ref_greedy(x, 60, init, "cosine")
    assert picks.tolist() == want_p
    np.testing.assert_allclose(radii, want_r, atol=1e-9)


def test_small_chunks_do_not_change_picks(monkeypatch):
    rng = np.random.default_rng(9)
    x, init = rng.normal(size=(500, 6)), rng.normal(size=(600, 6))
    want = greedy_k_center(x, 20, init)[0]
    monkeypatch.setattr(nearest, "BLOCK_ELEMS", 1000)
    assert np.array_equal(greedy_k_center(x, 20, init)[0], want)


grid_points = arrays(np.float64, st.tuples(st.integers(2, 40), st.just(3)), elements=st.integers(-3, 3))


@settings(max_examples=60, deadline=None)
@given(grid_points, st.integers(0, 12), st.data())
def test_greedy_properties_on_grids_with_ties(x, n_init, data):
    """Integer grids: many duplicates and exact ties, all resolved like the reference."""
    init = x[:n_init].copy() + 0.5 if n_init else None
    k = data.draw(st.integers(1, len(x)))
    picks, radii = greedy_k_center(x, k, init, metric="euclidean")
    assert len(set(picks.tolist())) == k  # unique
    assert np.all(np.diff(radii) <= 1e-12)  # never increases
    want_p, want_r = ref_greedy(x, k, init, "euclidean")
    assert picks.tolist() == want_p
    np.testing.assert_allclose(radii, want_r, atol=1e-9)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((np.ones((5, 3)), 0), {}, "k must be positive"),
        ((np.ones((5, 3)), 6), {}, "larger than the number"),
        ((np.ones((5, 3)), 2.0), {}, "must be an integer"),
        ((np.array([[1.0, np.nan]]), 1), {}, "NaN"),
        ((np.array([[1.0, np.inf]]), 1), {}, "NaN or infinite"),
        ((np.ones((5, 3)), 2, np.ones((4, 2))), {}, "dimension mismatch"),
        ((np.zeros((5, 3)), 2), {}, "zero-norm"),
        ((np.ones((5, 3)), 2, np.zeros((1, 3))), {}, "zero-norm"),
        ((np.ones((5, 3)), 2), {"metric": "manhattan"}, "metric"),
        ((np.ones(5), 2), {}, "2 dimensions"),
    ],
)
def test_greedy_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        greedy_k_center(*args, **kwargs)


def test_zero_vectors_fine_under_euclidean():
    picks, radii = greedy_k_center(np.zeros((4, 3)), 2, metric="euclidean")
    assert picks.tolist() == [0, 1] and radii.tolist() == [0.0, 0.0]
