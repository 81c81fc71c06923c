"""Label-free selection variants and diagnostics for the fidelity experiment (issue 21), on cached scores.

Every selector sees only what a user has: the pool's and the target's scores and embeddings. Labels enter
only in ``shares`` and the labelled half of ``diagnostics``.
"""

from __future__ import annotations

import numpy as np

from mak_ray.kcenter import greedy_k_center
from mak_ray.mak import fit_centroids, leave_one_out_nn, mak_score, proximity, quantile_of, quantile_table
from mak_ray.select import select


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def distances(
    space_pool: np.ndarray, space_target: np.ndarray, k: int = 10, seed: int = 0, centre: bool = False
):
    """(pool distance, target's own distance) to the target's spherical K-means centroids.

    ``centre``: subtract the target mean first (the features are nonnegative ReLU outputs, so raw cosines
    are all close to 1).
    """
    if centre:
        mu = space_target.mean(0, keepdims=True)
        space_pool, space_target = space_pool - mu, space_target - mu
    cent = fit_centroids(space_target, k, seed)
    return proximity(space_pool, cent), proximity(space_target, cent)


def nn_distance(pool: np.ndarray, target: np.ndarray, k: int = 1, block: int = 2048) -> np.ndarray:
    """Mean cosine distance of each pool row to its ``k`` nearest target rows."""
    t = unit(target)
    out = np.empty(len(pool))
    for s in range(0, len(pool), block):
        sim = unit(pool[s : s + block]) @ t.T
        out[s : s + block] = 1.0 - np.sort(sim, axis=1)[:, -k:].mean(1)
    return out


def nn_distance_self(target: np.ndarray, k: int = 1) -> np.ndarray:
    """The target's own leave-one-out ``k``-NN cosine distance (each row's neighbours exclude itself)."""
    t = unit(target)
    sim = t @ t.T
    np.fill_diagonal(sim, -np.inf)
    return 1.0 - np.sort(sim, axis=1)[:, -k:].mean(1)


def nn_gate(pool: np.ndarray, target: np.ndarray, q: float) -> tuple[np.ndarray, float]:
    """Pool rows whose 1-NN distance to the target is within the target's own ``q`` quantile of it."""
    cut = float(np.quantile(nn_distance_self(target), q))
    return nn_distance(pool, target) <= cut, cut


def density_ratio(pool: np.ndarray, target: np.ndarray, reference: np.ndarray, k: int = 10) -> np.ndarray:
    """log(k-NN radius in the target) - log(k'-NN radius in a uniform pool sample), k' = k * |ref| / |target|.

    Large where the pool is much denser than the target: under-represented (tail) regions of the target, and
    also OOD regions, which is why it is used behind the 1-NN gate. ``reference`` rows may be pool rows: each
    sees itself at distance 0, so one extra neighbour is taken there.
    """
    k_ref = max(1, int(round(k * len(reference) / len(target))))
    dt = nn_distance(pool, target, k)
    dr = nn_distance(pool, reference, k_ref + 1)
    return np.log(dt + 1e-6) - np.log(dr + 1e-6)


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), 1e-12)


def top_then_kcenter(score, emb, target_emb, k, allowed, core_ratio=1.5):
    idx = np.flatnonzero(allowed)
    core = idx[np.lexsort((np.arange(len(idx)), -score[idx]))[: int(np.ceil(core_ratio * k))]]
    picks, _ = greedy_k_center(emb[core], k, target_emb, metric="cosine")
    return core[picks]


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1 = int(positive.sum())
    n0 = len(score) - n1
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def mak_pick(ecle, prox, emb, target_emb, k, w=0.5, core_ratio=1.5, allowed=None):
    """The paper's selection (score, top core_ratio*K, K-center seeded with the target) inside ``allowed``."""
    idx = np.arange(len(ecle)) if allowed is None else np.flatnonzero(allowed)
    if len(idx) < k:  # a gate that leaves too few: fill with the best-scored of the rest
        idx = np.arange(len(ecle))
    s = mak_score(ecle[idx], prox[idx], w)
    core = idx[np.lexsort((np.arange(len(s)), -s))[: int(np.ceil(core_ratio * k))]]
    picks, _ = greedy_k_center(emb[core], k, target_emb, metric="cosine")
    return core[picks]


def selections(sc: dict, k: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``{method: picks}`` for the baselines and every label-free variant, and the gates' thresholds."""
    pe, te = sc["pool_ecle"], sc["target_ecle"]
    pf, tf = sc["pool_feat"], sc["target_feat"]
    pp, tp = sc["pool_proj"], sc["target_proj"]
    d_feat, td_feat = distances(pf, tf, seed=seed)
    d_proj, td_proj = distances(pp, tp, seed=seed)
    d_cent, td_cent = distances(pf, tf, seed=seed, centre=True)
    n = len(pe)
    out: dict[str, np.ndarray] = {}
    out["random"] = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1EC7])).choice(
        n, k, replace=False
    )
    out["tailness"] = np.argsort(-pe, kind="stable")[:k]
    out["proximity"] = np.argsort(d_feat, kind="stable")[:k]
    out["mak"] = mak_pick(pe, d_feat, pf, tf, k)
    out["mak-proj"] = mak_pick(pe, d_proj, pf, tf, k)
    out["mak-centred"] = mak_pick(pe, d_cent, pf, tf, k)
    th = {}
    for q in (0.9, 0.95, 0.99, 1.0):
        e_cut = float(np.quantile(te, q))
        th[f"ecle_q{q:g}"] = e_cut
        out[f"mak-egate{q:g}"] = mak_pick(pe, d_feat, pf, tf, k, allowed=pe <= e_cut)
    for q in (0.95, 0.99):
        d_cut = float(np.quantile(td_feat, q))
        th[f"dist_q{q:g}"] = d_cut
        out[f"mak-dgate{q:g}"] = mak_pick(pe, d_feat, pf, tf, k, allowed=d_feat <= d_cut)
    for q in (0.8, 0.9, 0.95):
        gate, cut = nn_gate(pf, tf, q)
        th[f"nn_q{q:g}"] = cut
        th[f"nn_q{q:g}_kept"] = float(gate.mean())
        out[f"mak-gated{q:g}"] = mak_pick(pe, d_feat, pf, tf, k, allowed=gate)
        out[f"mak-projgated{q:g}"] = mak_pick(pe, d_proj, pf, tf, k, allowed=gate)
    bank_idx = np.sort(np.random.default_rng([seed, 0xBA4C]).choice(n, 1024, replace=False))  # the ECLE bank
    ratio = density_ratio(pf, tf, pf[bank_idx])
    nn = nn_distance(pf, tf)
    out["mak-nn"] = mak_pick(pe, nn, pf, tf, k)  # proximity = 1-NN distance to the target, no gate
    for q in (0.8, 0.9, 0.95):
        gate, _ = nn_gate(pf, tf, q)
        out[f"mak-nn-gated{q:g}"] = mak_pick(pe, nn, pf, tf, k, allowed=gate)
        out[f"tailness-gated{q:g}"] = top_then_kcenter(pe, pf, tf, k, gate)
        out[f"rarity-gated{q:g}"] = top_then_kcenter(ratio, pf, tf, k, gate)
        out[f"mak-rarity-gated{q:g}"] = top_then_kcenter(mak_score(pe, -ratio), pf, tf, k, gate)
        out[f"rarity-nn-gated{q:g}"] = top_then_kcenter(_z(pe) + _z(ratio) - 2 * _z(nn), pf, tf, k, gate)
    # the product's method (mak_ray.select.methods, as the select stage runs it), at its default gate
    product_gate = quantile_of(quantile_table(leave_one_out_nn(tf, seed=seed)), 0.8)
    out["mak_gated"] = select(
        "mak_gated", k=k, ecle=pe, embeddings=pf, target_embeddings=tf, nn=nn, gate=product_gate
    ).index
    th["mak_gated_gate"] = product_gate
    # ECLE referenced to the target: distance above the target's own ECLE ceiling counts against a sample
    e_hi = float(np.quantile(te, 0.99))
    ref = np.where(pe <= e_hi, pe, 2 * e_hi - pe)  # rises to the ceiling, then falls as fast
    out["mak-eref"] = mak_pick(ref, d_feat, pf, tf, k)
    return out, th


def shares(picks: np.ndarray, pool_y: np.ndarray, pool_kind: list[str], tail: list[int]) -> dict:
    y = pool_y[picks]
    kinds = np.asarray(pool_kind)[picks]
    out = {"tail": float(np.isin(y, tail).mean()), "ood": float((y < 0).mean())}
    for kind in sorted({k for k in pool_kind if k.startswith("ood")}):
        out[kind] = float((kinds == kind).mean())
    return out


def diagnostics(
    sc: dict, pool_y: np.ndarray | None = None, pool_kind=None, target_y=None, seed: int = 0
) -> dict:
    """Label-free separation figures, plus the labelled ones when labels are given."""
    pe, te = sc["pool_ecle"], sc["target_ecle"]
    d, td = distances(sc["pool_feat"], sc["target_feat"], seed=seed)
    dp, tdp = distances(sc["pool_proj"], sc["target_proj"], seed=seed)
    from scipy.stats import spearmanr

    nn, tnn = nn_distance(sc["pool_feat"], sc["target_feat"]), nn_distance_self(sc["target_feat"])

    q = lambda x: [float(v) for v in np.quantile(x, [0.05, 0.5, 0.95])]  # noqa: E731
    out = {
        "pool_dist_q05_50_95": q(d),
        "target_dist_q05_50_95": q(td),
        "spread_ratio": float(
            (np.quantile(d, 0.95) - np.quantile(d, 0.05))
            / max(1e-12, np.quantile(td, 0.95) - np.quantile(td, 0.05))
        ),
        "beyond_t99_dist": float((d > np.quantile(td, 0.99)).mean()),
        "beyond_t99_dist_proj": float((dp > np.quantile(tdp, 0.99)).mean()),
        "beyond_t99_nn": float((nn > np.quantile(tnn, 0.99)).mean()),
        "nn_median_ratio": float(np.median(nn) / np.median(tnn)),
        "beyond_t99_ecle": float((pe > np.quantile(te, 0.99)).mean()),
        "ecle_median_ratio": float(np.median(pe) / np.median(te)),
        "spearman_ecle_dist": float(spearmanr(pe, d).statistic),
        "pool_ecle_q05_50_95": q(pe),
        "target_ecle_q05_50_95": q(te),
    }
    if pool_y is not None:
        ood = pool_y < 0
        out["auroc_dist"] = auroc(d, ood)
        out["auroc_dist_proj"] = auroc(dp, ood)
        out["auroc_ecle"] = auroc(pe, ood)
        out["auroc_nn"] = auroc(nn, ood)
        kinds = np.asarray(pool_kind)
        for kind in sorted({k for k in pool_kind if k.startswith("ood")}):
            sel = (kinds == kind) | ~ood
            out[f"auroc_ecle[{kind}]"] = auroc(pe[sel], ood[sel])
            out[f"auroc_dist[{kind}]"] = auroc(d[sel], ood[sel])
        out["pool_ecle_by_class"] = {int(c): float(pe[pool_y == c].mean()) for c in range(10)}
        out["pool_ecle_ood_kind"] = {k: float(pe[kinds == k].mean()) for k in sorted(set(kinds[ood]))}
    if target_y is not None:
        out["target_ecle_by_class"] = {int(c): float(te[target_y == c].mean()) for c in np.unique(target_y)}
    return out
