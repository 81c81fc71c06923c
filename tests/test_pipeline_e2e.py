"""The whole pipeline on the tiny generated demo: every stage runs, outputs are complete, a rerun skips."""

from __future__ import annotations

import logging

import pyarrow.compute as pc
import pytest

from mak_ray import storage
from mak_ray.config import load_config
from mak_ray.demo.make import make_demo_data
from mak_ray.pipeline import STAGES, run_pipeline, run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("e2e")
    info = make_demo_data(str(root / "data"), "tiny", synthetic=True)
    p = info["paths"]
    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"data.target={p['target']}",
            f"data.pool={p['pool']}",
            f"data.eval_train={p['eval_train']}",
            f"data.eval_test={p['eval_test']}",
            f"run.output_uri={root / 'run'}",
        ],
    )
    report = run_pipeline(cfg)
    return cfg, info, report


def test_every_stage_completes(tiny_run):
    cfg, info, report = tiny_run
    out = cfg.run.output_uri
    for d in ("pretrain", "embed/target", "score", "select", "retrain", "evaluate", "report"):
        assert storage.exists(storage.join(out, d, "_SUCCESS")), d
    assert storage.read_text(report).lstrip().lower().startswith("<!doctype html")
    timings = storage.read_json(storage.join(out, "timings.json"))["stages"]
    assert set(timings) == set(STAGES)


def test_accounting_and_selections(tiny_run):
    cfg, info, _ = tiny_run
    out = cfg.run.output_uri
    summary = storage.read_json(storage.join(out, "summary.json"))
    assert summary["inputs"] == info["sizes"]["pool"]
    assert summary["inputs"] == summary["scored"] + summary["failed"]
    for method in cfg.select.methods:
        ids = storage.read_text(storage.join(out, "select", method, "selection.txt")).split()
        assert len(ids) == cfg.select.budget == len(set(ids)), method
        table = storage.read_parquet(storage.join(out, "select", method, "selection.parquet"))
        assert table.column("id").to_pylist() == ids
        assert table.column("order").to_pylist() == list(range(len(ids)))
        assert summary["selected"][method] == cfg.select.budget
    tail = storage.read_parquet(storage.join(out, "select", "tailness", "selection.parquet"))
    ecle = tail.column("ecle").to_numpy()
    assert (ecle[:-1] >= ecle[1:]).all()  # tailness picks in descending ECLE
    near = storage.read_parquet(storage.join(out, "select", "proximity", "selection.parquet"))
    prox = near.column("proximity").to_numpy()
    assert (prox[:-1] <= prox[1:]).all()
    scores = storage.read_parquet(storage.join(out, "score"), columns=["id", "error"])
    usable = set(scores.filter(pc.is_null(scores["error"]))["id"].to_pylist())
    mak = set(storage.read_text(storage.join(out, "select", "mak", "selection.txt")).split())
    assert mak <= usable


def test_evaluation_for_every_model(tiny_run):
    cfg, _, _ = tiny_run
    for name in ["target_only", *cfg.select.methods]:
        metrics = storage.read_json(storage.join(cfg.run.output_uri, "evaluate", name, "metrics.json"))
        for setting in ("full", "few_shot"):
            assert 0.0 <= metrics[setting]["top1"] <= 1.0


def test_rerun_skips_completed_stages(tiny_run, caplog):
    cfg, _, _ = tiny_run
    before = storage.read_json(storage.join(cfg.run.output_uri, "timings.json"))
    caplog.set_level(logging.INFO, logger="mak_ray.pipeline")
    run_pipeline(cfg)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(STAGES)
    assert storage.read_json(storage.join(cfg.run.output_uri, "timings.json")) == before
    assert run_stage("select", cfg).endswith("select")
