"""The whole pipeline on the tiny generated demo: every stage runs, outputs are complete, a rerun skips."""

from __future__ import annotations

import logging

import pyarrow.compute as pc
import pytest

from mak_ray import storage
from mak_ray.config import load_config
from mak_ray.demo.make import make_demo_data
from mak_ray.layout import RunLayout, done
from mak_ray.pipeline import run_pipeline, run_stage
from mak_ray.registry import STAGES, TARGET_ONLY
from mak_ray.select.output import read_selection_ids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


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
            # three methods keep the suite short; tailness and proximity go through the same code, and
            # tests/test_selection_stage.py checks all five against the in-memory selector
            "select.methods=[mak, random, kcenter]",
        ],
    )
    report = run_pipeline(cfg)
    return cfg, info, report


def test_every_stage_completes(tiny_run):
    cfg, info, report = tiny_run
    layout = RunLayout(cfg.run.output_uri)
    for stage in STAGES:
        assert done(layout.stage_dir(stage)), stage
    assert storage.read_text(report).lstrip().lower().startswith("<!doctype html")
    timings = storage.read_json(layout.timings)["stages"]
    assert set(timings) == set(STAGES)


def test_accounting_and_selections(tiny_run):
    cfg, info, _ = tiny_run
    layout = RunLayout(cfg.run.output_uri)
    summary = storage.read_json(layout.summary)
    assert summary["inputs"] == info["sizes"]["pool"]
    assert summary["inputs"] == summary["scored"] + summary["failed"]
    for method in cfg.select.methods:
        ids = read_selection_ids(layout.selection(method))
        assert len(ids) == cfg.select.budget == len(set(ids)), method
        assert storage.read_text(layout.selection(method).text).split() == ids
        table = storage.read_parquet(layout.selection(method).parquet)
        assert table.column("id").to_pylist() == ids
        assert table.column("order").to_pylist() == list(range(len(ids)))
        assert summary["selected"][method] == cfg.select.budget
    scores = storage.read_parquet(layout.scores.root, columns=["id", "error"])
    usable = set(scores.filter(pc.is_null(scores["error"]))["id"].to_pylist())
    mak = set(read_selection_ids(layout.selection("mak")))
    assert mak <= usable


def test_evaluation_for_every_model(tiny_run):
    cfg, _, _ = tiny_run
    for name in [TARGET_ONLY, *cfg.select.methods]:
        metrics = storage.read_json(RunLayout(cfg.run.output_uri).metrics_json(name))
        for setting in ("full", "few_shot"):
            assert 0.0 <= metrics[setting]["top1"] <= 1.0


def test_rerun_skips_completed_stages(tiny_run, caplog):
    cfg, _, _ = tiny_run
    layout = RunLayout(cfg.run.output_uri)
    before = storage.read_json(layout.timings)
    caplog.set_level(logging.INFO, logger="mak_ray.pipeline")
    run_pipeline(cfg)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(STAGES)
    assert storage.read_json(layout.timings) == before
    assert run_stage("select", cfg) == layout.stage_dir("select")


# ------------------------------------------------------------------------------------------- faults


def _fork_run(tiny_run, root, overrides: list[str]):
    """A new run that reuses the tiny run's pretraining and target embedding (so only later stages run)."""
    import shutil
    from pathlib import Path

    cfg, info, _ = tiny_run
    src = RunLayout(cfg.run.output_uri)
    dst = RunLayout(str(Path(root) / "run"))
    for stage in ("pretrain", "embed_target"):
        shutil.copytree(src.stage_dir(stage), dst.stage_dir(stage))
    p = info["paths"]
    return load_config(
        "configs/tiny.yaml",
        [
            f"data.target={p['target']}",
            f"data.pool={p['pool']}",
            f"data.eval_train={p['eval_train']}",
            f"data.eval_test={p['eval_test']}",
            f"run.output_uri={dst.root}",
            "select.methods=[mak, random, kcenter]",
            *overrides,
        ],
    )


def _score_table(cfg):
    t = storage.read_parquet(
        RunLayout(cfg.run.output_uri).scores.root, columns=["id", "ecle", "proximity", "error"]
    )
    return t.sort_by("id")


def _pids_matching(text: str) -> list[int]:
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _wait_for(pred, timeout_s: float, poll_s: float = 0.2) -> bool:
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(poll_s)
    return False


def test_scoring_actor_killed_mid_run_loses_and_duplicates_nothing(tiny_run, tmp_path):
    """SIGKILL the scoring actor after its first output: Ray restarts it, and the output equals the clean run."""
    import os
    import signal
    import threading

    cfg, _, _ = tiny_run
    cfg2 = _fork_run(tiny_run, tmp_path, ["score.batch_size=8", "score.num_actors=1"])
    killed: list[int] = []
    score_dir = RunLayout(cfg2.run.output_uri).scores.root

    def killer():
        def first_parts():
            from pathlib import Path

            return any(Path(score_dir).glob("shard=*/part-*.parquet")) if Path(score_dir).exists() else False

        if _wait_for(first_parts, 240, 0.05):
            for pid in _pids_matching("MapBatches(Scorer)"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run_stage("score", cfg2)
    t.join(timeout=5)
    assert killed, "the scoring actor was never seen, so nothing was killed"
    got, want = _score_table(cfg2), _score_table(cfg)
    assert got.num_rows == want.num_rows == len(set(got.column("id").to_pylist()))
    assert got.column("id").equals(want.column("id"))
    assert got.column("error").equals(want.column("error"))
    import numpy as np

    np.testing.assert_allclose(got.column("ecle").to_numpy(), want.column("ecle").to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        got.column("proximity").to_numpy(), want.column("proximity").to_numpy(), rtol=1e-5
    )


def test_job_killed_mid_scoring_resumes_to_the_same_selection(tiny_run, tmp_path):
    """Kill the whole `python -m jobs.score` process tree mid-run; a rerun resumes and selects the same ids."""
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from tests.rayprocs import stop_cluster

    cfg, _, _ = tiny_run
    cfg3 = _fork_run(tiny_run, tmp_path, ["score.batch_size=8", "score.num_actors=1"])
    overrides = [
        f"data.target={cfg3.data.target}",
        f"data.pool={cfg3.data.pool}",
        f"run.output_uri={cfg3.run.output_uri}",
        "score.batch_size=8",
        "score.num_actors=1",
    ]
    ray_tmp = tempfile.mkdtemp(prefix="mk-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    layout3 = RunLayout(cfg3.run.output_uri)
    markers = Path(layout3.scores.markers_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.score", "--config", "configs/tiny.yaml", *overrides],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bank = Path(layout3.bank)
    try:
        # The bank is written just before the scoring stream starts: kill the whole job tree in that stream.
        seen = _wait_for(bank.exists, 300, 0.05)
        time.sleep(0.5)
        n_markers = len(list(markers.iterdir())) if markers.exists() else 0
        os.killpg(proc.pid, 9)
    finally:
        proc.wait(timeout=30)
        stop_cluster(ray_tmp)
    assert seen, "scoring never started before the time limit"
    n_shards = len(list(Path(RunLayout(cfg.run.output_uri).scores.markers_dir).iterdir()))
    assert n_markers < n_shards, "the job finished before it was killed; nothing was interrupted"
    assert not done(layout3.stage_dir("score"))
    run_stage("score", cfg3)
    run_stage("select", cfg3)
    got = _score_table(cfg3)
    assert got.num_rows == len(set(got.column("id").to_pylist())) == _score_table(cfg).num_rows
    for method in cfg.select.methods:
        a = read_selection_ids(RunLayout(cfg.run.output_uri).selection(method))
        b = read_selection_ids(layout3.selection(method))
        assert a == b, method
