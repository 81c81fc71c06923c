"""The pick pass through cells of centers: same picks as the plain greedy, local work, sound bounds; device choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mak_ray.kcenter import cells as kcells
from mak_ray.kcenter import greedy as kc
from mak_ray.kcenter import grouped
from mak_ray.kcenter._backend import Ops
from mak_ray.kcenter.bounds import move_threshold
from mak_ray.kcenter.greedy import greedy_k_center, resolve_device


def plain_greedy(x: np.ndarray, k: int, init: np.ndarray | None, metric: str) -> tuple[list[int], np.ndarray]:
    """One full float64 pass per pick: each point's distance to its nearest chosen point; ties to the lowest index."""
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)

    def dist(c: np.ndarray) -> np.ndarray:  # every point to the rows of c: [n, len(c)]
        if metric == "cosine":
            return 1.0 - x @ c.T
        return np.sqrt(np.maximum((x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * x @ c.T, 0.0))

    mind = np.full(len(x), np.inf)
    if init is not None:
        c = init.astype(np.float64)
        if metric == "cosine":
            c = c / np.linalg.norm(c, axis=1, keepdims=True)
        mind = dist(c).min(1)
    picks, radii = [], []
    for _ in range(k):
        m = mind.copy()
        m[picks] = -np.inf
        s = int(m.argmax())
        picks.append(s)
        np.minimum(mind, dist(x[s : s + 1])[:, 0], out=mind)
        m = mind.copy()
        m[picks] = -np.inf
        radii.append(max(float(m.max()), 0.0))
    return picks, np.asarray(radii)


def clustered(n: int, d: int, seed: int, modes: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(modes, d)) * 3
    return centers[rng.integers(0, modes, n)] + rng.normal(size=(n, d)) * rng.uniform(0.2, 1.0, size=(n, 1))


def duplicate_class(x: np.ndarray) -> np.ndarray:
    """For every row, the lowest index of a bitwise identical row."""
    _, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


@pytest.fixture
def small_lazy_init(monkeypatch):
    """Lazy init from 2,048 init points on (a 512-point subset), so that small tests exercise it."""
    monkeypatch.setattr(grouped, "INIT_SUBSET", 512)
    monkeypatch.setattr(grouped, "LAZY_INIT_ABOVE", 2048)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("n_init", [0, 300, 2500])  # none, measured in full, lazy (> LAZY_INIT_ABOVE)
def test_pick_pass_matches_plain_greedy_with_duplicates(metric, n_init, small_lazy_init):
    """Many picks (the radius gets small, so cells prune), a third of the points duplicated (exact ties)."""
    base = clustered(3000, 8, seed=n_init + len(metric))
    rng = np.random.default_rng(1)
    x = np.vstack([base, base[rng.choice(3000, 1500, replace=False)]])[rng.permutation(4500)]
    init = clustered(n_init, 8, seed=99)[:, :] if n_init else None
    k = 2000
    stats: dict = {}
    picks, radii = greedy_k_center(x, k, init, metric=metric, stats=stats)
    want, want_r = plain_greedy(x, k, init, metric)
    # identical rows tie exactly in real arithmetic; compare which point (up to its duplicates) is picked
    cls = duplicate_class(x)
    assert cls[picks].tolist() == cls[want].tolist()
    assert len(set(picks.tolist())) == k
    np.testing.assert_allclose(radii, want_r, rtol=1e-9, atol=1e-9)
    # the pick pass is local: late picks measure a small share of the centers
    centers = stats["centers_measured"][k // 2 :]
    n_centers = n_init + np.arange(k // 2, k)
    assert centers.mean() < 0.25 * n_centers.mean()


def test_pick_pass_on_integer_grid_resolves_ties_to_the_lowest_index():
    """Integer coordinates: every distance is exact, so ties must go exactly as in the plain greedy."""
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, size=(3000, 3)).astype(np.float64)  # 343 positions: heavy duplication
    init = rng.integers(-3, 4, size=(20, 3)).astype(np.float64) + 0.5
    for k, ini in ((400, None), (400, init)):  # past the number of distinct positions: radius 0, all ties
        picks, radii = greedy_k_center(x, k, ini, metric="euclidean")
        want, want_r = plain_greedy(x, k, ini, "euclidean")
        assert picks.tolist() == want
        np.testing.assert_allclose(radii, want_r, atol=1e-12)


def test_pick_pass_float32_picks_like_the_plain_greedy_up_to_rounding_ties():
    """float32 (the production dtype): up to the first pick that float64 calls a float32 rounding tie
    (if any), the picks are the plain greedy's, and the two points of that tie are within float32 resolution."""
    x = clustered(5000, 16, seed=3).astype(np.float32)
    init = clustered(400, 16, seed=4).astype(np.float32)
    picks, _ = greedy_k_center(x, 2500, init)
    want, _ = plain_greedy(x, 2500, init, "cosine")
    if picks.tolist() == want:
        return
    first = int(np.argmax(picks != np.asarray(want)))
    assert first > 500  # a tie this early would be suspicious on continuous data
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    inn = init.astype(np.float64) / np.linalg.norm(init.astype(np.float64), axis=1, keepdims=True)
    chosen = np.vstack([inn, xn[picks[:first]]])
    gaps = [1.0 - (xn[p] @ chosen.T).max() for p in (picks[first], want[first])]
    assert abs(gaps[0] - gaps[1]) < 1e-6


@pytest.mark.parametrize("angular", [True, False])
def test_reach_is_a_sound_bound_for_move_threshold(angular):
    """At any true distance >= reach(gmax), even the lowest computed squared distance keeps gmax below the threshold."""
    rng = np.random.default_rng(2)
    err = 1e-4
    cells = kcells.CenterCells(np.eye(2), 1, err, angular)
    gmax = np.concatenate([rng.uniform(0.0, 1.9, 4000), [0.0, 1e-6, 1.99]])
    reach = cells.reach(gmax)
    finite = np.isfinite(reach)
    assert finite.mean() > 0.95
    dist = reach[finite] * (1.0 + rng.uniform(0.0, 1e-3, finite.sum()))
    true2 = 4.0 * np.sin(np.minimum(dist, math.pi) / 2.0) ** 2 if angular else dist * dist
    thresh = move_threshold(Ops(), true2 - err, err, angular)  # computed distance err below the true one
    assert np.all(gmax[finite] < thresh)
    # and not loose: with a tiny margin the reach is twice the members' distance (half-angle / half-chord rule)
    tiny = kcells.CenterCells(np.eye(2), 1, 1e-14, angular)
    g = rng.uniform(0.01, 1.0, 100)
    member = 2.0 * np.arcsin(np.sqrt(g) / 2.0) if angular else np.sqrt(g)
    np.testing.assert_allclose(tiny.reach(g), 2.0 * member, rtol=1e-6)
    assert cells.reach(np.array([-1.0]))[0] == -np.inf  # an empty group is never read


def test_cells_nearest_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(4)
    centers = clustered(3000, 8, seed=6)
    cells = kcells.CenterCells(centers[rng.choice(3000, 60, replace=False)], 3000, 1e-9, False)
    sqc = (centers * centers).sum(1)
    cells.add(np.arange(3000), centers, sqc)
    q = clustered(500, 8, seed=7)
    sqq = (q * q).sum(1)
    d2 = ((q[:, None, :] - centers[None]) ** 2).sum(-1)
    bound = np.where(rng.random(500) < 0.5, np.inf, np.quantile(d2.min(1), 0.5))
    among = np.sort(rng.choice(3000, 2000, replace=False))  # search only these centers
    d2 = d2[:, among]
    # per block through the cells; all of ``among`` in one GEMM as the blocks need most of it; or as it is small
    for dense, direct in ((np.inf, 0), (0.0, 0), (np.inf, 10**9)):
        monkeypatch.setattr(kcells, "NEAREST_DENSE", dense)
        monkeypatch.setattr(kcells, "NEAREST_DIRECT", direct)
        tight = np.full(500, np.inf) if dense == 0.0 else bound
        best, gid = cells.nearest(q, sqq, tight, centers, sqc, among)
        found = gid >= 0
        assert np.isin(gid[found], among).all()
        assert np.array_equal(found, d2.min(1) < tight)
        np.testing.assert_allclose(best[found], d2.min(1)[found], rtol=1e-9, atol=1e-9)
        col = np.searchsorted(among, gid[found])
        np.testing.assert_allclose(d2[np.flatnonzero(found), col], d2.min(1)[found], rtol=1e-9, atol=1e-9)
        assert np.array_equal(best[~found], tight[~found])


# ---------------------------------------------------------------- device choice


def test_resolve_device_on_a_machine_without_gpu(monkeypatch):
    monkeypatch.setattr(kc, "_cuda_available", lambda: False)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="'cuda' was asked for, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="must be one of auto, cpu, cuda"):
        resolve_device("gpu")


def test_resolve_device_with_a_gpu(monkeypatch):
    monkeypatch.setattr(kc, "_cuda_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cpu") == "cpu"  # asked for explicitly: the numpy path even with a GPU


def test_greedy_device_choice_runs_where_it_can():
    x = clustered(2000, 8, seed=8).astype(np.float32)
    init = clustered(100, 8, seed=9).astype(np.float32)
    want, want_r = greedy_k_center(x, 300, init, device="cpu")
    auto, auto_r = greedy_k_center(x, 300, init, device="auto")
    assert auto.tolist() == want.tolist()
    np.testing.assert_allclose(auto_r, want_r, rtol=1e-5, atol=1e-6)
    if kc._cuda_available():  # the torch path on the GPU picks the same points
        got, _ = greedy_k_center(x, 300, init, device="cuda")
        assert got.tolist() == want.tolist()
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            greedy_k_center(x, 300, init, device="cuda")
