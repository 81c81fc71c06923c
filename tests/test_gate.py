"""mak_gated's gate: nearest-target distance, the target's leave-one-out reference, and the gated key."""

from __future__ import annotations

import numpy as np
import pytest

from mak_ray.mak import gate, gated_key, leave_one_out_nn, nn_distance, quantile_of, quantile_table
from mak_ray.select import select


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nn_distance_is_one_minus_the_best_cosine():
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    want = 1.0 - (_unit(x) @ _unit(t).T).max(axis=1)
    np.testing.assert_allclose(nn_distance(x, t), want, atol=1e-6)
    assert nn_distance(t[:3] * 4.0, t)[:3] == pytest.approx([0, 0, 0], abs=1e-6)  # scale does not matter


def test_leave_one_out_skips_each_row_itself(monkeypatch):
    rng = np.random.default_rng(1)
    t = rng.normal(size=(30, 6))
    loo = leave_one_out_nn(t)
    sim = _unit(t) @ _unit(t).T
    np.fill_diagonal(sim, -np.inf)
    np.testing.assert_allclose(loo, 1.0 - sim.max(axis=1), atol=1e-6)
    assert (loo > 1e-3).all()  # never its own zero distance
    monkeypatch.setattr(gate, "_BLOCK_ELEMS", 60)  # 2 query rows per block: 15 blocks, same distances
    np.testing.assert_allclose(leave_one_out_nn(t), loo, rtol=0, atol=1e-6)
    monkeypatch.undo()
    dup = leave_one_out_nn(np.vstack([t, t[:1]]))
    assert dup[0] == pytest.approx(0.0, abs=1e-6) and dup[-1] == pytest.approx(0.0, abs=1e-6)
    sample = leave_one_out_nn(t, queries=10)  # a seeded sample of queries, each against all the others
    assert len(sample) == 10 and set(np.round(sample, 6)) <= set(np.round(loo, 6))
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_nn(t[:1])


def test_quantile_table_reads_back_numpy_quantiles():
    v = np.random.default_rng(2).gamma(2.0, size=5000)
    table = quantile_table(v)
    for q in (0.0, 0.05, 0.5, 0.8, 0.99, 1.0):
        assert quantile_of(table, q) == pytest.approx(np.quantile(v, q), rel=1e-9)
    assert np.quantile(v, 0.8) < quantile_of(table, 0.801) < np.quantile(v, 0.805)  # between stored levels
    with pytest.raises(ValueError):
        quantile_of(table, 1.5)


def test_gated_key_puts_every_gated_row_first():
    ecle = np.array([0.1, 9.0, 3.0, 0.0, 5.0])
    nn = np.array([0.01, 0.50, 0.02, 0.03, 0.20])
    key = gated_key(ecle, nn, gate=0.1)
    order = np.argsort(-key, kind="stable").tolist()
    assert order == [2, 0, 3, 4, 1]  # gated by ECLE (3.0, 0.1, 0.0), then the rest nearest first
    with pytest.raises(ValueError, match="shape"):
        gated_key(ecle, nn[:3], 0.1)


def test_mak_gated_selection_stays_inside_the_gate_and_fills_from_the_nearest():
    rng = np.random.default_rng(3)
    n = 400
    centres = rng.normal(size=(6, 32))
    target = centres[rng.integers(0, 6, 60)] + 0.3 * rng.normal(size=(60, 32))
    near = target[rng.integers(0, 60, n // 2)] + 0.1 * rng.normal(size=(n // 2, 32))
    far = rng.normal(size=(n // 2, 32))
    emb = np.vstack([near, far])
    ecle = np.concatenate([rng.uniform(0, 1, n // 2), rng.uniform(2, 3, n // 2)])  # the far rows look "rare"
    nn = nn_distance(emb, target)
    gate = quantile_of(quantile_table(leave_one_out_nn(target)), 0.8)
    inside = nn <= gate
    assert 20 < inside.sum() <= n // 2 and not inside[n // 2 :].any()
    picked = select("mak_gated", k=10, ecle=ecle, embeddings=emb, target_embeddings=target, nn=nn, gate=gate)
    assert inside[picked.index].all()
    mak = select("mak", k=10, ecle=ecle, proximity=nn, embeddings=emb, target_embeddings=target)
    assert (~inside[mak.index]).any()  # the paper's score, on the same numbers, lets far rows in
    many = select(
        "mak_gated",
        k=int(inside.sum()) + 5,
        ecle=ecle,
        embeddings=emb,
        target_embeddings=target,
        nn=nn,
        gate=gate,
        core_ratio=1.0,
    )
    outside = many.index[~inside[many.index]]
    assert len(outside) == 5 and set(outside) == set(np.flatnonzero(~inside)[np.argsort(nn[~inside])[:5]])
