"""ECLE, proximity, z-statistics and MAK score against plain references written from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mak_ray.mak import ScoreStats, ZStats, ecle, fit_centroids, mak_score, proximity
from mak_ray.mak.ecle import (
    bank_permutation,
    draw_negatives,
    keys_to_u64,
    sample_offsets,
    window_mask,
)
from mak_ray.select import TopN


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_pair_losses(zp: np.ndarray, zq: np.ndarray, t: float) -> np.ndarray:
    """SimCLR NT-Xent of the paper's code for one batch and one view pair, per sample (float64)."""
    b = len(zp)
    out = np.concatenate([zp, zq]).astype(np.float64)
    sim = np.exp(out @ out.T / t)
    np.fill_diagonal(sim, 0.0)  # denominator: every view but the anchor itself
    pos = np.exp((zp.astype(np.float64) * zq).sum(1) / t)
    loss = -np.log(np.concatenate([pos, pos]) / sim.sum(1))
    return 0.5 * (loss[:b] + loss[b:])


def ref_ecle_one_batch(views: np.ndarray, t: float) -> np.ndarray:
    z = unit(views.astype(np.float64))
    r = len(z)
    pairs = [(p, q) for p in range(r) for q in range(p + 1, r)]
    return sum(ref_pair_losses(z[p], z[q], t) for p, q in pairs) / len(pairs)


def ref_ecle_bank(views, bank, t, batch_size, repeats, seed, keys=None) -> np.ndarray:
    z, bz = unit(views.astype(np.float64)), unit(bank.astype(np.float64))
    r, n, _ = z.shape
    k64 = keys_to_u64(keys, n)
    total = np.zeros(n)
    pairs = [(p, q) for p in range(r) for q in range(p + 1, r)]
    for rep in range(repeats):
        idx = draw_negatives(k64, bank.shape[1], batch_size - 1, seed=seed, repeat=rep)
        for i in range(n):
            for p, q in pairs:
                zp = np.concatenate([z[p, i : i + 1], bz[p, idx[i]]])
                zq = np.concatenate([z[q, i : i + 1], bz[q, idx[i]]])
                total[i] += ref_pair_losses(zp, zq, t)[0]
    return total / (repeats * len(pairs))


# ---------------------------------------------------------------- ECLE


@pytest.mark.parametrize("r_views,n,t", [(2, 32, 0.2), (4, 48, 0.5), (3, 17, 0.1)])
def test_ecle_matches_formula_when_n_equals_batch_size(r_views, n, t):
    views = np.random.default_rng(n).normal(size=(r_views, n, 8)).astype(np.float32)
    got = ecle(views, temperature=t, batch_size=n, repeats=3, seed=5)
    np.testing.assert_allclose(got, ref_ecle_one_batch(views, t), atol=1e-5, rtol=0)


def test_ecle_in_batch_averages_random_batchings():
    rng = np.random.default_rng(1)
    views = rng.normal(size=(3, 40, 6)).astype(np.float64)
    got = ecle(views, batch_size=16, repeats=4, seed=9)
    # reference: the documented batching (array_split of a seeded permutation into ceil(N/B) batches)
    want = np.zeros(40)
    for r in range(4):
        perm = np.random.default_rng(np.random.SeedSequence([9, r])).permutation(40)
        for idx in np.array_split(perm, 3):
            want[idx] += ref_ecle_one_batch(views[:, idx], 0.2)
    np.testing.assert_allclose(got, want / 4, atol=1e-9)
    assert np.array_equal(got, ecle(views, batch_size=16, repeats=4, seed=9))
    assert not np.allclose(got, ecle(views, batch_size=16, repeats=4, seed=10))


def test_ecle_bank_matches_reference_and_draws_are_distinct():
    rng = np.random.default_rng(2)
    views = rng.normal(size=(3, 12, 8)).astype(np.float32)
    bank = rng.normal(size=(3, 40, 8)).astype(np.float32)
    got = ecle(views, bank, batch_size=9, repeats=3, seed=4)
    np.testing.assert_allclose(got, ref_ecle_bank(views, bank, 0.2, 9, 3, 4), atol=1e-5)
    idx = draw_negatives(keys_to_u64(None, 12), 40, 8, seed=4, repeat=0)
    assert all(len(set(row)) == 8 for row in idx)


def loop_ecle_bank(views, bank, t, batch_size, repeats, seed, keys) -> np.ndarray:
    """Direct loops over the documented bank design, no helper shared with the fast path but the RNG.

    Repeat r orders the bank by ``bank_permutation``; a sample's negatives are the
    ``batch_size - 1`` entries from its offset on, wrapping past the end.
    """
    z, bz = unit(views.astype(np.float64)), unit(bank.astype(np.float64))
    r_views, n, _ = z.shape
    m = bz.shape[1]
    k64 = keys_to_u64(keys, n)
    total = np.zeros(n)
    for rep in range(repeats):
        perm = bank_permutation(m, seed=seed, repeat=rep)
        offs = sample_offsets(k64, m, seed=seed, repeat=rep)
        for i in range(n):
            neg = [int(perm[(int(offs[i]) + j) % m]) for j in range(batch_size - 1)]
            for p in range(r_views):
                for q in range(r_views):
                    if p == q:
                        continue
                    a = z[p, i]
                    pos = np.exp(a @ z[q, i] / t)
                    den = pos + sum(np.exp(a @ bz[p, j] / t) + np.exp(a @ bz[q, j] / t) for j in neg)
                    total[i] += -np.log(pos / den)
    return total / (repeats * r_views * (r_views - 1))


@pytest.mark.parametrize("dtype,t", [(np.float32, 0.2), (np.float64, 0.05)])
def test_ecle_bank_fast_path_equals_direct_loops_with_wrapping_windows(dtype, t):
    rng = np.random.default_rng(12)
    views = rng.normal(size=(3, 30, 5)).astype(dtype)
    bank = rng.normal(size=(3, 11, 5)).astype(dtype)  # 8 negatives out of 11: most windows wrap
    keys = [f"img-{i}" for i in range(30)]
    offs = sample_offsets(keys_to_u64(keys, 30), 11, seed=3, repeat=0)
    assert (offs + 8 > 11).sum() >= 10  # the case under test: windows running past the end
    got = ecle(views, bank, temperature=t, batch_size=9, repeats=3, seed=3, keys=keys)
    np.testing.assert_allclose(got, loop_ecle_bank(views, bank, t, 9, 3, 3, keys), atol=1e-5, rtol=0)


def test_window_mask_matches_modular_definition():
    rng = np.random.default_rng(13)
    for m in (7, 2048, 40_000):  # uint16 and uint32 paths
        ranks_t = np.stack([rng.permutation(m) for _ in range(3)], axis=1)
        offsets = rng.integers(0, m, size=(5, 3))
        offsets[0] = m - 1  # wraps right away
        count = max(1, m // 3)
        want = ((ranks_t[None, :, :] - offsets[:, None, :]) % m < count).astype(np.float32)
        got = window_mask(ranks_t, offsets, count)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert np.all(got.sum(axis=1) == count)


def test_ecle_bank_independent_of_batch_composition_and_order():
    rng = np.random.default_rng(3)
    views = rng.normal(size=(4, 60, 16)).astype(np.float32)
    bank = rng.normal(size=(4, 100, 16)).astype(np.float32)
    keys = [f"s3://pool/img_{i}.jpg" for i in range(60)]
    full = ecle(views, bank, batch_size=32, repeats=2, keys=keys)
    assert np.array_equal(full, ecle(views, bank, batch_size=32, repeats=2, keys=keys))  # rescoring
    perm = rng.permutation(60)[:25]  # a different "shard": subset, shuffled
    part = ecle(views[:, perm], bank, batch_size=32, repeats=2, keys=[keys[i] for i in perm])
    np.testing.assert_allclose(part, full[perm], rtol=0, atol=1e-6)


def test_bank_draw_is_uniform_over_bank():
    idx = draw_negatives(np.arange(4000, dtype=np.uint64), 50, 10, seed=0, repeat=1)
    counts = np.bincount(idx.ravel(), minlength=50)
    expected = 4000 * 10 / 50
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # per-sample sets differ across repeats
    other = draw_negatives(np.arange(4000, dtype=np.uint64), 50, 10, seed=0, repeat=2)
    assert (np.sort(idx, 1) != np.sort(other, 1)).any(axis=1).mean() > 0.9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(views=np.full((2, 4, 3), np.nan)), "NaN"),
        (dict(views=np.zeros((2, 4, 3))), "zero-norm"),
        (dict(views=np.ones((1, 4, 3))), "at least 2 views"),
        (dict(views=np.ones((2, 4, 3)), negatives=np.ones((2, 9, 5))), "dimension mismatch"),
        (dict(views=np.ones((2, 4, 3)), negatives=np.ones((3, 9, 3))), "views"),
        (dict(views=np.ones((2, 4, 3)), negatives=np.ones((2, 3, 3)), batch_size=8), "bank has 3"),
        (dict(views=np.ones((2, 4, 3)), temperature=0.0), "temperature"),
        (dict(views=np.ones((2, 1, 3))), "at least 2 samples"),
    ],
)
def test_ecle_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ecle(**kwargs)


# ---------------------------------------------------------------- proximity


def test_proximity_is_one_minus_max_cosine():
    rng = np.random.default_rng(4)
    emb, cent = rng.normal(size=(50, 7)), rng.normal(size=(5, 7))
    want = 1 - (unit(emb) @ unit(cent).T).max(1)
    np.testing.assert_allclose(proximity(emb, cent), want, atol=1e-6)


def test_fit_centroids_finds_spherical_clusters():
    rng = np.random.default_rng(5)
    centers = unit(rng.normal(size=(4, 16)))
    pts = np.concatenate([c + 0.05 * rng.normal(size=(100, 16)) for c in centers]).astype(np.float32)
    cent = fit_centroids(pts, k=4, seed=0)
    assert cent.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    assert (unit(centers) @ cent.T).max(1).min() > 0.98  # every true cluster is found
    assert np.array_equal(cent, fit_centroids(pts, k=4, seed=0))
    assert proximity(pts, cent).max() < 0.05


def test_proximity_bad_input():
    with pytest.raises(ValueError, match="dimension mismatch"):
        proximity(np.ones((3, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="zero-norm"):
        proximity(np.zeros((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="k=9 is larger"):
        fit_centroids(np.ones((5, 4)), k=9)


# ---------------------------------------------------------------- z-stats, top-n, MAK score


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.integers(0, 60), max_size=5),
)
def test_zstats_merge_equals_one_pass(values, cuts):
    x = np.asarray(values)
    parts = np.split(x, sorted(c % (len(x) + 1) for c in cuts))
    merged = ZStats()
    for part in parts:
        merged = merged.merge(ZStats.of(part))
    assert merged.count == len(x)
    np.testing.assert_allclose(merged.mean, x.mean(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged.variance, x.var(), rtol=1e-7, atol=1e-6)
    assert ZStats.from_dict(merged.to_dict()) == merged


def test_mak_score_formula_and_streaming_stats():
    rng = np.random.default_rng(6)
    e, p = rng.normal(3, 1, 200), rng.uniform(0, 1, 200)
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    np.testing.assert_allclose(mak_score(e, p, 0.3), 0.3 * z(e) - 0.7 * z(p), atol=1e-12)
    stats = ScoreStats.empty().update(e[:70], p[:70]).merge(ScoreStats.empty().update(e[70:], p[70:]))
    # a shard scored alone with the global stats equals the same rows of the global scoring
    np.testing.assert_allclose(mak_score(e[:10], p[:10], 0.3, stats), mak_score(e, p, 0.3)[:10], atol=1e-12)
    assert np.all(mak_score(np.ones(5), p[:5]) == -0.5 * z(p[:5]))  # zero std -> term is 0
    with pytest.raises(ValueError, match="NaN"):
        mak_score([np.nan, 1.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="length mismatch"):
        mak_score([1.0, 2.0], [0.1])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=80),
    st.integers(1, 20),
    st.integers(1, 30),
)
def test_topn_streaming_equals_sort(scores, n, batch):
    s = np.asarray(scores, dtype=float)
    ids = np.random.default_rng(len(s)).permutation(len(s)) * 3
    top = TopN(n)
    for i in range(0, len(s), batch):
        top.push(s[i : i + batch], ids[i : i + batch])
    order = sorted(range(len(s)), key=lambda i: (-s[i], ids[i]))[:n]
    got_ids, got_scores = top.result()
    assert got_ids.tolist() == ids[order].tolist()
    assert got_scores.tolist() == s[order].tolist()
    half = TopN(n).push(s[::2], ids[::2]).merge(TopN(n).push(s[1::2], ids[1::2]))
    assert half.result()[0].tolist() == ids[order].tolist()


def test_topn_string_ids():
    top = TopN(2).push([1.0, 2.0, 2.0], ["b", "c", "a"])
    assert top.result()[0].tolist() == ["a", "c"]
