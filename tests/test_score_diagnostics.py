"""The score diagnostics: figures merged from Ray tasks equal the same figures computed on all rows at once,
and the warnings fire when the model cannot separate the pool from the target, not when it can."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mak_ray import storage
from mak_ray.config import load_config
from mak_ray.layout import RunLayout
from mak_ray.mak import quantile_table
from mak_ray.score.diagnostics import diagnose


def _write(run: str, ecle, prox, nn, labels, errors, files: int, target_prox, target_nn) -> RunLayout:
    layout = RunLayout(run)
    n = len(ecle)
    for s, rows in enumerate(np.array_split(np.arange(n), files)):
        table = pa.table(
            {
                "id": [f"p{i}" for i in rows],
                "ecle": pa.array(ecle[rows].astype(np.float32)),
                "proximity": pa.array(prox[rows].astype(np.float32)),
                "nn_distance": pa.array(nn[rows].astype(np.float32)),
                "label": pa.array([labels[i] for i in rows], pa.string()),
                "error": pa.array([errors[i] for i in rows], pa.string()),
            }
        )
        storage.write_parquet(table, layout.scores.part(f"s{s:02d}", "part-0.parquet"))
    storage.write_json(
        layout.target_reference,
        {
            "images": len(target_nn),
            "nn_distance": quantile_table(target_nn),
            "proximity": quantile_table(target_prox),
        },
    )
    return layout


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Exact Mann-Whitney AUROC (ties half)."""
    pos, neg = score[positive], score[~positive]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def _pool(rng, n: int, separable: bool):
    """In-distribution rows like the target; OOD rows far away (separable) or inside the target's distances
    with high ECLE (the issue's near-OOD case)."""
    n_ood = n // 3
    target_prox = rng.gamma(4, 0.01, 800)
    target_nn = rng.gamma(4, 0.003, 800)
    prox = np.concatenate(
        [rng.gamma(4, 0.01, n - n_ood), rng.gamma(4, 0.01 if not separable else 0.05, n_ood)]
    )
    nn = np.concatenate(
        [rng.gamma(4, 0.003, n - n_ood), rng.gamma(4, 0.003 if not separable else 0.03, n_ood)]
    )
    ecle = np.concatenate([rng.normal(5, 0.5, n - n_ood), rng.normal(6 if not separable else 5, 0.5, n_ood)])
    ecle += 30.0 * prox if not separable else 0.0
    labels = [f"c{i % 4}" for i in range(n - n_ood)] + [
        "ood-faces" if i % 2 else "ood-digits" for i in range(n_ood)
    ]
    errors = [None] * n
    for bad in (3, n - 1):
        errors[bad] = "corrupt"
    return ecle, prox, nn, labels, errors, target_prox, target_nn


@pytest.mark.parametrize("separable", [True, False])
def test_merged_figures_equal_the_whole_pool_figures(tmp_path, ray_session, separable):
    rng = np.random.default_rng(0)
    ecle, prox, nn, labels, errors, t_prox, t_nn = _pool(rng, 1500, separable)
    run = str(tmp_path / "run")
    _write(run, ecle, prox, nn, labels, errors, 5, t_prox, t_nn)
    cfg = load_config(None, [f"run.output_uri={run}"])
    d = diagnose(cfg, RunLayout(run))
    assert storage.read_json(RunLayout(run).diagnostics) == d
    ok = np.array([e is None for e in errors])
    e, p, q = (a[ok].astype(np.float32).astype(np.float64) for a in (ecle, prox, nn))
    lab = np.array(labels)[ok]
    ood = np.char.startswith(lab.astype(str), "ood")
    assert d["rows"] == 1500 and d["usable"] == 1498
    for col, v in (("proximity", p), ("nn_distance", q), ("ecle", e)):
        for level in ("0.05", "0.5", "0.95"):
            assert d["pool"][f"{col}_q"][level] == pytest.approx(np.quantile(v, float(level)), rel=0.01)
        assert d["auroc"][col] == pytest.approx(_auroc(v, ood), abs=0.005)
    assert d["target"]["nn_distance_q"]["0.99"] == pytest.approx(np.quantile(t_nn, 0.99))
    assert d["beyond_target_p99"]["nn_distance"] == pytest.approx(np.mean(q > np.quantile(t_nn, 0.99)))
    assert d["beyond_target_p99"]["proximity"] == pytest.approx(np.mean(p > np.quantile(t_prox, 0.99)))
    assert d["corr_ecle_proximity"] == pytest.approx(np.corrcoef(e, p)[0, 1], abs=1e-6)
    assert d["corr_ecle_nn_distance"] == pytest.approx(np.corrcoef(e, q)[0, 1], abs=1e-6)
    spread = (np.quantile(p, 0.95) - np.quantile(p, 0.05)) / (
        np.quantile(t_prox, 0.95) - np.quantile(t_prox, 0.05)
    )
    assert d["proximity_spread_ratio"] == pytest.approx(spread, rel=0.03)
    for name in ("c0", "ood-faces"):
        sel = lab == name
        assert d["ecle_by_label"][name]["count"] == int(sel.sum())
        assert d["ecle_by_label"][name]["mean_ecle"] == pytest.approx(e[sel].mean(), rel=1e-6)
    text = " ".join(d["warnings"])
    if separable:
        assert d["warnings"] == []
    else:  # the OOD third sits inside the target's distances, and ECLE rises with distance
        assert "99th percentile" in text and "mak_gated" in text and "spreads only" in text


def test_unlabelled_pool_has_no_auroc(tmp_path, ray_session):
    rng = np.random.default_rng(1)
    ecle, prox, nn, _, errors, t_prox, t_nn = _pool(rng, 300, True)
    run = str(tmp_path / "run")
    _write(run, ecle, prox, nn, [None] * 300, errors, 2, t_prox, t_nn)
    d = diagnose(load_config(None, [f"run.output_uri={run}"]), RunLayout(run))
    assert d["auroc"] is None and d["ecle_by_label"] == {} and d["usable"] == 298
