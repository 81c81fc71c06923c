"""Two-stage K-center: spatial shards, merged by pick distance; the bound it reports holds exactly."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mak_ray.kcenter import greedy_k_center, two_stage_k_center
from mak_ray.kcenter.two_stage import ShardPicks, merge_picks


def covering_radius(x: np.ndarray, centers: np.ndarray, metric: str) -> float:
    """Max over ``x`` of the distance to the nearest center, straight from the definition (float64)."""
    x, c = x.astype(np.float64), np.asarray(centers, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
        return float((1.0 - x @ c.T).min(1).max())
    d = np.sqrt(np.maximum(((x[:, None, :] - c[None]) ** 2).sum(-1), 0.0))
    return float(d.min(1).max())


def clustered(n: int, seed: int, d: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, d)) * 3
    return (centers[rng.integers(0, 6, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_merge_takes_the_largest_pick_distances_and_reports_the_next_as_radius():
    a = ShardPicks(np.array([4, 2, 7]), np.array([9.0, 5.0, 1.0]), 0.5, 10)
    b = ShardPicks(np.array([0, 3]), np.array([8.0, 4.0]), 3.0, 5)
    m = merge_picks([a, b], 3)
    assert m.order.tolist() == [[0, 0], [1, 0], [0, 1]]  # 9, 8, 5
    assert m.radii.tolist() == [8.0, 5.0, 4.0]  # the next entry each time
    assert m.counts.tolist() == [2, 1] and m.cut_short == []
    # k = 4 takes all of b's picks, and b's radius after them (3.0) is the next entry: a true bound
    m4 = merge_picks([a, b], 4)
    assert m4.order.tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert m4.radii[-1] == 3.0 and m4.cut_short == []
    # k = 5 reaches a's pick at 1.0 past b's radius 3.0: b ran out of budget, so it was cut short
    m5 = merge_picks([a, b], 5)
    assert m5.order.tolist()[-1] == [0, 2] and m5.radii[-1] == 3.0 and m5.cut_short == [1]
    with pytest.raises(ValueError, match="fewer than k=6"):
        merge_picks([a, b], 6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_one_shard_is_the_greedy(metric):
    x = clustered(400, 1)
    init = clustered(30, 2)
    ids, radii = two_stage_k_center(x, 40, init, shards=1, metric=metric, use_ray=False)
    want, want_r = greedy_k_center(x, 40, init, metric=metric)
    assert ids.tolist() == want.tolist()
    np.testing.assert_allclose(radii, want_r, rtol=1e-6, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 6),
    st.sampled_from(["cosine", "euclidean"]),
    st.booleans(),
    st.integers(1, 60),
)
def test_the_reported_bound_covers_every_point(seed, shards, metric, with_init, k):
    x = clustered(300, seed)
    init = clustered(20, seed + 1) if with_init else None
    stats: dict = {}
    ids, radii = two_stage_k_center(
        x, k, init, shards=shards, metric=metric, use_ray=False, seed=seed, stats=stats
    )
    assert len(ids) == k == len(set(ids.tolist()))
    assert np.all(radii[1:] <= radii[:-1] + 1e-12)  # inf without init while a shard has no pick yet
    centers = np.vstack([x[ids]] + ([] if init is None else [init]))
    full = covering_radius(x, centers, metric)
    assert full <= radii[-1] * (1 + 1e-5) + 1e-6
    assert stats["radius_bound"] == radii[-1] and sum(stats["shard_sizes"]) == 300


def test_a_shard_cut_short_by_its_budget_runs_again():
    rng = np.random.default_rng(4)
    centers = np.eye(8)[:3] * 10
    sizes = (500, 50, 50)  # one big region: its shard needs far more than an even budget
    x = np.vstack([c + rng.normal(size=(n, 8)) for c, n in zip(centers, sizes)]).astype(np.float32)
    stats: dict = {}
    ids, radii = two_stage_k_center(x, 50, None, shards=3, per_shard_k=17, use_ray=False, stats=stats)
    assert stats["rounds"] >= 2 and stats["cut_short"] == []
    assert max(stats["per_shard_k"]) > 17
    assert covering_radius(x, x[ids], "cosine") <= radii[-1] * (1 + 1e-5) + 1e-6


def test_on_ray_actors_equals_in_process(ray_session):
    x = clustered(500, 7)
    init = clustered(25, 8)
    a = two_stage_k_center(x, 60, init, shards=3, use_ray=False)
    b = two_stage_k_center(x, 60, init, shards=3, use_ray=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_spatial_shards_stay_close_to_single_stage():
    x = clustered(3000, 5, d=16)
    init = clustered(100, 6, d=16)
    single, single_r = greedy_k_center(x, 300, init)
    ids, radii = two_stage_k_center(x, 300, init, shards=4, use_ray=False)
    full = covering_radius(x, np.vstack([x[ids], init]), "cosine")
    assert full <= radii[-1] + 1e-6
    assert full <= 1.25 * single_r[-1]


def _leaves(value: Any) -> Iterator[Any]:
    """Every array and table inside a value that ``ray.get`` returned."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name))
    elif isinstance(value, (np.ndarray, pa.Table)):
        yield value


def test_file_two_stage_keeps_the_candidates_out_of_the_caller(tmp_path, ray_session, monkeypatch):
    """The select stage's two-stage path over candidate files: the shard actors read the files; the caller
    gets back pick indices and distances (one value per pick) and the chosen rows without embeddings, puts
    nothing in the object store, and the bound it reports covers every candidate."""
    import ray

    from bench.bench_two_stage import positions, spec_over_files, write_candidate_files
    from mak_ray.select.finish import two_stage

    n, k, dim = 900, 60, 16
    x = clustered(n, 11, d=dim)
    target = clustered(40, 12, d=dim)
    uris = write_candidate_files(str(tmp_path), x, 3)
    got: list[Any] = []
    put: list[Any] = []
    real_get, real_put = ray.get, ray.put

    def get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        got.append(out)
        return out

    def put_(value, *args, **kwargs):
        put.append(value)
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "put", put_)
    spec = spec_over_files(n, k, 3)
    chosen, radii, info = two_stage(spec, uris, target)
    monkeypatch.undo()
    assert put == []
    leaves = list(_leaves(got))
    assert leaves, "the picks come back through ray.get"
    for leaf in leaves:
        if isinstance(leaf, pa.Table):
            assert "embedding" not in leaf.column_names and leaf.num_rows <= k
        else:
            assert leaf.ndim == 1 and len(leaf) <= max(info["per_shard_k"]) + 1
    received = sum(leaf.num_rows if isinstance(leaf, pa.Table) else len(leaf) for leaf in leaves)
    # per pick and round: an index and a distance (a shard run again returns more picks than before); then
    # the chosen rows
    assert received <= 2 * info["union_size"] * info["rounds"] + 3 * k
    picked = positions(chosen)
    assert len(set(picked.tolist())) == k and sum(info["shard_sizes"]) == n
    decoded = x.astype(np.float16).astype(np.float32)  # what the files hold
    assert covering_radius(decoded, np.vstack([decoded[picked], target]), "cosine") <= radii[-1] + 1e-5


@pytest.mark.parametrize(
    "points,k,kwargs,match",
    [
        (np.ones((3, 2)), 4, {}, "larger than"),
        (np.array([[np.nan, 1.0]]), 1, {}, "NaN"),
        (np.ones((3, 2)), 1, {"init": np.ones((2, 4))}, "dimension mismatch"),
    ],
)
def test_bad_input(points, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        two_stage_k_center(points, k, use_ray=False, **kwargs)
