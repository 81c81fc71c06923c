"""The selection methods behind one interface: each a ranking key, plus K-center for mak and kcenter."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from mak_ray.kcenter import greedy_k_center
from mak_ray.mak import ScoreStats, mak_score, nn_distance
from mak_ray.registry import METHODS
from mak_ray.select import TopN, core_size, ranking_key, select, top_positions, uniform_key


@pytest.fixture
def pool():
    rng = np.random.default_rng(0)
    n = 200
    return {
        "ids": np.array([f"img{i:04d}" for i in range(n)]),
        "ecle": rng.normal(5, 1, n),
        "proximity": rng.uniform(0, 1, n),
        "embeddings": rng.normal(size=(n, 8)).astype(np.float32),
        "target_embeddings": rng.normal(size=(30, 8)).astype(np.float32),
    }


def test_mak_is_kcenter_on_the_top_scored_core(pool):
    sel = select("mak", k=20, **pool)
    score = mak_score(pool["ecle"], pool["proximity"])
    n_core = math.ceil(1.5 * 20)
    core = sorted(range(200), key=lambda i: (-score[i], i))[:n_core]
    picks, radii = greedy_k_center(pool["embeddings"][core], 20, pool["target_embeddings"])
    assert sel.index.tolist() == [core[p] for p in picks]
    assert sel.ids.tolist() == [f"img{core[p]:04d}" for p in picks]
    np.testing.assert_allclose(sel.scores, score[sel.index])
    np.testing.assert_allclose(sel.radii, radii)
    assert np.array_equal(sel.index, select("mak", k=20, **pool).index)  # deterministic


def test_streaming_core_with_global_stats_gives_the_same_picks(pool):
    stats = ScoreStats.empty()
    for s in range(0, 200, 64):
        stats.update(pool["ecle"][s : s + 64], pool["proximity"][s : s + 64])
    top = TopN(core_size(20, 1.5, 200))
    for s in range(0, 200, 64):
        top.push(
            mak_score(pool["ecle"][s : s + 64], pool["proximity"][s : s + 64], stats=stats),
            np.arange(s, min(200, s + 64)),
        )
    core = top.result()[0]
    sub = {k: (v[core] if k != "target_embeddings" else v) for k, v in pool.items()}
    streamed = select("mak", k=20, stats=stats, **sub)
    assert streamed.ids.tolist() == select("mak", k=20, **pool).ids.tolist()


def test_every_method_shares_the_interface(pool):
    nn = nn_distance(pool["embeddings"], pool["target_embeddings"])
    for method in METHODS:
        gated = {"nn": nn, "gate": float(np.quantile(nn, 0.5))} if method == "mak_gated" else {}
        sel = select(method, k=15, seed=3, **pool, **gated)
        assert sel.method == method and len(sel.ids) == 15 and len(set(sel.index.tolist())) == 15
        assert sel.scores is not None and sel.scores.shape == (15,)
    assert select("tailness", k=5, **pool).index.tolist() == np.argsort(-pool["ecle"])[:5].tolist()
    assert select("proximity", k=5, **pool).index.tolist() == np.argsort(pool["proximity"])[:5].tolist()
    with pytest.raises(ValueError, match="needs nn_distance"):
        select("mak_gated", k=5, **pool)
    kc = select("kcenter", k=5, **pool)
    assert kc.index.tolist() == greedy_k_center(pool["embeddings"], 5, pool["target_embeddings"])[0].tolist()


def test_random_is_a_seeded_hash_of_the_id(pool):
    r1, r2 = select("random", k=10, seed=1, **pool), select("random", k=10, seed=1, **pool)
    assert np.array_equal(r1.index, r2.index)
    assert not np.array_equal(r1.index, select("random", k=10, seed=2, **pool).index)
    # the picks depend on the ids, not on their order or on which other rows are there
    perm = np.random.default_rng(5).permutation(200)
    shuffled = {k: (v[perm] if k != "target_embeddings" else v) for k, v in pool.items()}
    assert set(select("random", k=10, seed=1, **shuffled).ids) == set(r1.ids)
    half = {k: (v[:100] if k != "target_embeddings" else v) for k, v in pool.items()}
    key = uniform_key(1, pool["ids"])
    assert (
        select("random", k=5, seed=1, **half).ids.tolist()
        == pool["ids"][:100][np.argsort(-key[:100])[:5]].tolist()
    )


def test_uniform_key_is_uniform_and_takes_any_id():
    ids = [f"s3://bucket/pool/{i}.jpg" for i in range(20000)] + ["", "é", "a\nb", "x" * 300]
    key = uniform_key(7, ids)
    assert key.shape == (len(ids),) and ((key >= 0) & (key < 1)).all()
    assert abs(key[:20000].mean() - 0.5) < 0.01 and np.histogram(key[:20000], 10)[0].min() > 1800
    assert len(np.unique(key)) == len(ids)
    # Arrow input (the streaming stage's) and Python strings agree; a prefix of an id is a different id
    assert np.array_equal(uniform_key(7, pa.array(ids)), key)
    assert uniform_key(7, ["ab"])[0] != uniform_key(7, ["a"])[0] != uniform_key(7, ["a\x00"])[0]


def test_ties_go_to_the_lower_position():
    sel = select("tailness", k=2, ecle=np.array([1.0, 3.0, 3.0, 3.0]))
    assert sel.index.tolist() == [1, 2]
    assert top_positions(np.array([0.0, 2.0, 2.0, 1.0, 2.0]), 2).tolist() == [1, 2]
    assert top_positions(np.zeros(4), 3).tolist() == [0, 1, 2]


def test_ranking_keys():
    e, p = np.array([1.0, 2.0]), np.array([0.3, 0.1])
    assert ranking_key("tailness", ecle=e).tolist() == [1.0, 2.0]
    assert ranking_key("proximity", proximity=p).tolist() == [-0.3, -0.1]
    assert ranking_key("kcenter", n=3).tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(ranking_key("mak", ecle=e, proximity=p), mak_score(e, p))


@pytest.mark.parametrize(
    "method,kwargs,match",
    [
        ("mak", dict(k=0), "k must be positive"),
        ("mak", dict(k=500), "larger than"),
        ("nope", dict(k=1), "unknown selection method"),
        ("tailness", dict(k=2, ecle=None), "needs ecle"),
    ],
)
def test_selection_bad_input(pool, method, kwargs, match):
    args = {**pool, **kwargs}
    with pytest.raises(ValueError, match=match):
        select(method, **args)


def test_length_mismatch(pool):
    with pytest.raises(ValueError, match="length mismatch"):
        select("mak", k=5, **{**pool, "ecle": pool["ecle"][:-1]})
    with pytest.raises(ValueError, match="core_ratio"):
        select("mak", k=5, core_ratio=0.5, **pool)
