"""The report's diagnostics section, its warnings, and the demo checks of the recommended method."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import spearmanr

from mak_ray import storage
from mak_ray.demo.checks import demo_checks
from mak_ray.layout import RunLayout
from mak_ray.report import build_report
from mak_ray.report.collect import PoolSummary, ReportedSelection, RunData
from mak_ray.report.numbers import compute_numbers, spearman
from tests.test_report import TARGET, _cells, write_fake_run

WARNINGS = [
    "the pool's proximity lies inside the target's own: 2% of the pool is beyond the target's 99th percentile",
    "ECLE ranks OOD above in-distribution images (AUROC 0.85): MAK's score rewards junk",
]


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half: the reference for the file's AUROC."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _write_diagnostics(run: str) -> dict:
    """Diagnostics computed from the fake run's own pool scores, as the score stage would write them."""
    layout = RunLayout(run)
    pool = storage.read_parquet(layout.scores.root, columns=["label", "ecle", "proximity", "error"])
    ok = [e is None for e in pool.column("error").to_pylist()]
    labels = [lab for lab, k in zip(pool.column("label").to_pylist(), ok) if k]
    ecle = pool.column("ecle").to_numpy(zero_copy_only=False)[ok].astype(float)
    prox = pool.column("proximity").to_numpy(zero_copy_only=False)[ok].astype(float)
    ood = np.array([lab.startswith("ood") for lab in labels])
    by_label = {
        lab: {"mean_ecle": float(ecle[[x == lab for x in labels]].mean()), "count": labels.count(lab)}
        for lab in sorted(set(labels))
    }
    q = {k: float(np.quantile(prox, float(k))) for k in ("0.05", "0.5", "0.95")}
    diag = {
        "rows": len(labels),
        "target": {
            "images": sum(TARGET.values()),
            "nn_distance_q": {"0.5": 0.01, "0.8": 0.02, "0.9": 0.03, "0.99": 0.05},
            "proximity_q": {"0.05": 0.1, "0.5": 0.3, "0.95": 0.6, "0.99": 0.8},
        },
        "pool": {"nn_distance_q": q, "proximity_q": q, "ecle_q": q},
        "beyond_target_p99": {"proximity": float(np.mean(prox > 0.8)), "nn_distance": 0.5},
        "proximity_spread_ratio": 0.25,
        "corr_ecle_proximity": float(np.corrcoef(ecle, prox)[0, 1]),
        "corr_ecle_nn_distance": math.nan,  # not computable: must become null / n/a
        "auroc": {
            "proximity": _auroc(prox[ood], prox[~ood]),
            "nn_distance": None,
            "ecle": _auroc(ecle[ood], ecle[~ood]),
        },
        "ecle_by_label": by_label,
        "warnings": WARNINGS,
    }
    storage.write_text(
        layout.scores.file("diagnostics.json"), json.dumps(diag)
    )  # NaN as the json module writes it
    return diag


def test_diagnostics_section_and_warnings(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    write_fake_run(run)
    diag = _write_diagnostics(run)
    page = Path(build_report(run)).read_text()
    data = json.loads(Path(RunLayout(run).report_file("report_data.json")).read_text())
    d = data["diagnostics"]

    # every warning at the top, before the first section, and again in the diagnostics section
    top = page[: page.index("<h2")]
    section = page[page.index("Does the model separate the pool from the target?") :]
    for w in WARNINGS:
        esc = w.replace("'", "&#x27;")
        assert esc in top and esc in section
    assert d["warnings"] == WARNINGS

    # numbers carried as written, NaN as null
    assert d["corr_ecle_nn_distance"] is None and d["auroc"]["nn_distance"] is None
    assert d["corr_ecle_proximity"] == pytest.approx(diag["corr_ecle_proximity"])
    assert d["auroc"]["ecle"] == pytest.approx(diag["auroc"]["ecle"])
    assert (
        "n/a"
        in _cells(re.search(r"<tr><td>correlation of ECLE and nn_distance[^<]*</td>(.*?)</tr>", page)[0])[-1]
    )
    beyond = _cells(
        re.search(
            r"<tr><td>pool share beyond the target&#x27;s 99th percentile of proximity</td>(.*?)</tr>", page
        )[0]
    )
    assert beyond[-1] == f"{100 * diag['beyond_target_p99']['proximity']:.1f}%"
    ecle_auroc = re.search(r"<tr><td>ecle</td>(.*?)</tr>", page)
    assert _cells(ecle_auroc[0])[-1] == f"{diag['auroc']['ecle']:.4g}"

    # quantiles: target and pool side by side on the union of the quantile keys
    header = re.search(r"<tr><th>set</th><th>measure</th>(.*?)</tr>", page)[1]
    assert re.findall(r"<th>(.*?)</th>", header) == ["q0.05", "q0.5", "q0.8", "q0.9", "q0.95", "q0.99"]
    rows = [_cells(r) for r in re.findall(r"<tr>(<td>(?:target|pool)</td><td>[^<]*</td>.*?)</tr>", page)]
    by_name = {(r[0], r[1]): r[2:] for r in rows}
    assert by_name[("target", "proximity")] == ["0.1", "0.3", "", "", "0.6", "0.8"]
    assert by_name[("pool", "proximity")][1] == f"{diag['pool']['proximity_q']['0.5']:.4g}"
    assert by_name[("target", "nn_distance")][0] == ""  # the target has no 5th percentile of nn_distance

    # mean ECLE per class beside its target size: classes by target count, OOD labels after
    by_class = d["ecle_by_class"]
    assert [r["label"] for r in by_class] == ["a", "b", "c", "d", "ood-noise", "ood-texture"]
    assert [r["target_count"] for r in by_class] == [40, 25, 10, 4, None, None]
    assert [r["pool_count"] for r in by_class] == [20, 20, 20, 20, 10, 10]
    for r in by_class:
        assert r["mean_ecle"] == pytest.approx(diag["ecle_by_label"][r["label"]]["mean_ecle"])
    rho = spearmanr([40, 25, 10, 4], [r["mean_ecle"] for r in by_class[:4]]).statistic
    assert d["ecle_size_spearman"] == pytest.approx(rho)
    row_c = _cells(re.search(r"<tr><td>c</td>(.*?)</tr>", section)[1])
    assert row_c == ["10", "20", f"{by_class[2]['mean_ecle']:.4g}"]


def test_unreadable_diagnostics_is_a_missing_part(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    write_fake_run(run)
    storage.write_text(RunLayout(run).scores.file("diagnostics.json"), "{not json")
    page = Path(build_report(run)).read_text()
    assert "Missing parts" in page and "score diagnostics" in page
    assert "No score diagnostics" in page and "<tr><td>mak</td>" in page


def test_malformed_diagnostics_do_not_cost_the_report(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    write_fake_run(run)
    bad = {
        "target": [1, 2],
        "pool": {"proximity_q": {"median": 0.1, "0.5": "x", "0.95": 0.7}},
        "auroc": "n/a",
        "corr_ecle_proximity": "high",
        "ecle_by_label": {"a": 3, "c": {"mean_ecle": 1.5, "count": 7}},
        "warnings": "one warning as a string",
    }
    storage.write_json(RunLayout(run).scores.file("diagnostics.json"), bad)
    page = Path(build_report(run)).read_text()
    d = json.loads(Path(RunLayout(run).report_file("report_data.json")).read_text())["diagnostics"]
    assert (
        d["warnings"] == ["one warning as a string"]
        and "one warning as a string" in page[: page.index("<h2")]
    )
    assert d["pool"]["proximity_q"] == {"0.5": None, "0.95": 0.7} and d["target"] == {}
    assert d["auroc"] is None and d["corr_ecle_proximity"] is None and "OOD AUROC" not in page
    rows = {r["label"]: r for r in d["ecle_by_class"]}
    assert rows["a"]["mean_ecle"] is None and rows["c"] == {
        "label": "c",
        "ood": False,
        "target_count": 10,
        "pool_count": 7,
        "mean_ecle": 1.5,
    }


def test_spearman_ties_and_degenerate_input() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 20, 40]) == pytest.approx(
        spearmanr([1, 2, 3, 4], [10, 20, 20, 40]).statistic
    )
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 2, 3], [5, 5, 5]) is None


def _reported(method: str, labels: list[str]) -> ReportedSelection:
    n = len(labels)
    return ReportedSelection(method, [f"{method}{i}" for i in range(n)], labels, np.zeros(n), np.zeros(n))


def _accuracy(few: float) -> dict:
    block = {"overall": few, "groups": {"many": 0.9, "medium": 0.8, "few": few}}
    return {"full": block, "few_shot": block}


def test_checks_state_the_recommended_method() -> None:
    """mak_gated is checked against random when the run has it, mak otherwise; the values are its own."""
    counts = {"a": 40, "b": 25, "c": 10, "d": 4}
    pool = PoolSummary(100, 0, 100, {"a": 30, "b": 30, "c": 10, "d": 10, "ood-x": 20}, pa.table({}))
    data = RunData(run_uri="x", target_counts=counts, pool=pool)
    data.selections = {
        "mak": _reported("mak", ["c", "ood-x", "ood-x", "a", "d"]),  # tail 2/5, OOD 2/5
        "mak_gated": _reported("mak_gated", ["c", "d", "d", "a", "b"]),  # tail 3/5, OOD 0
        "random": _reported("random", ["a", "b", "ood-x", "c", "a"]),  # tail 1/5, OOD 1/5
    }
    data.metrics = {"mak": _accuracy(0.5), "mak_gated": _accuracy(0.7), "random": _accuracy(0.6)}
    checks = demo_checks(compute_numbers(data))
    assert [c["method"] for c in checks] == ["mak_gated"] * 4
    assert all(c["claim"].startswith("mak_gated") or "with mak_gated" in c["claim"] for c in checks)
    assert [(c["value"], c["random"], c["holds"]) for c in checks] == [
        (0.6, 0.2, True),
        (0.0, 0.2, True),
        (0.7, 0.6, True),
        (0.7, 0.6, True),
    ]
    del data.selections["mak_gated"], data.metrics["mak_gated"]
    checks = demo_checks(compute_numbers(data))
    assert [c["method"] for c in checks] == ["mak"] * 4
    assert [c["holds"] for c in checks] == [True, False, False, False]
    del data.selections["random"]
    assert demo_checks(compute_numbers(data)) == []


def test_a_selection_warning_stands_at_the_top(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    write_fake_run(run)
    layout = RunLayout(run)
    method = next(m for m in ("mak", "mak_gated", "random") if storage.exists(layout.selection(m).summary))
    summary = storage.read_json(layout.selection(method).summary)
    text = f"62 % of the {method} picks lie farther from their nearest target image than 90 % of the target's own"
    storage.write_json(
        layout.selection(method).summary, summary | {"picks_beyond_target_p90": 0.62, "warnings": [text]}
    )
    page = Path(build_report(run)).read_text()
    assert text.replace("'", "&#x27;") in page[: page.index("<h2")]
    data = json.loads(Path(layout.report_file("report_data.json")).read_text())
    assert data["selections"][method]["stage"]["picks_beyond_target_p90"] == 0.62
