"""The whole pipeline on the tiny generated demo: every stage runs, outputs are complete, a rerun skips, a
config change reruns what it affects, and faults mid-run lose and duplicate nothing."""

from __future__ import annotations

import logging

import pyarrow.compute as pc
import pytest

from mak_ray import storage
from mak_ray.config import load_config
from mak_ray.layout import RunLayout, done
from mak_ray.pipeline import run_pipeline, run_stage
from mak_ray.registry import STAGES, TARGET_ONLY
from mak_ray.select.output import read_selection_ids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def tiny_run(readme_run, docs_clone, ray_session):
    """The tiny pipeline as the README's quick start runs it: ``mak-ray pipeline -c configs/tiny.yaml`` in a fresh
    copy of the repository (tests/test_docs.py runs those blocks). Here its config is the same file with the
    relative paths made absolute, so its fingerprints match the run's."""
    if readme_run.returncode != 0:
        pytest.fail(f"the README's quick start failed: {readme_run.explain()}")
    clone = docs_clone.root
    data = clone / "demo-data" / "tiny"
    info = storage.read_json(str(data / "manifest.json"))
    cfg = load_config(
        str(clone / "configs" / "tiny.yaml"),
        [f"data.{name}={data / name}" for name in ("target", "pool", "eval_train", "eval_test")]
        + [f"run.output_uri={clone / 'runs' / 'tiny'}"],
    )
    return cfg, info, RunLayout(cfg.run.output_uri).report_file("index.html")


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


# ------------------------------------------------------------------------------------------- fingerprints


def _cli_args(cfg, *extra: str) -> list[str]:
    """The tiny run's config as CLI arguments (``configs/tiny.yaml`` plus its overrides)."""
    d = cfg.data
    return [
        "-c",
        "configs/tiny.yaml",
        f"data.target={d.target}",
        f"data.pool={d.pool}",
        f"data.eval_train={d.eval_train}",
        f"data.eval_test={d.eval_test}",
        f"run.output_uri={cfg.run.output_uri}",
        f"select.methods=[{','.join(cfg.select.methods)}]",
        *extra,
    ]


def _line(out: str, key: str) -> str:
    return next(x for x in out.splitlines() if x.split()[:1] == [key])


def test_status_says_done_and_what_a_change_would_rerun(tiny_run, capsys):
    """Before any rerun, ``status`` names the stages a change makes stale and why; it reads no images and
    starts no Ray."""
    from mak_ray.cli import main as cli_main

    cfg, _, _ = tiny_run
    assert cli_main(["status", *_cli_args(cfg)]) == 0
    out = capsys.readouterr().out
    assert all(_line(out, s).split()[1] == "done" for s in STAGES), out
    assert "3 done, 0 to add, 0 to remove" in _line(out, "shards")

    assert cli_main(["status", *_cli_args(cfg, "score.views=6")]) == 1
    out = capsys.readouterr().out
    assert _line(out, "pretrain").split()[1] == _line(out, "embed_target").split()[1] == "done"
    assert "stale: " in _line(out, "score") and "score.views: 4 -> 6" in _line(out, "score")
    assert "score: runs again first" in _line(out, "select/mak")
    assert "0 done, 3 to add, 3 to remove" in _line(out, "shards")  # scored again from the start

    assert cli_main(["status", *_cli_args(cfg, "model.width=16")]) == 1
    out = capsys.readouterr().out
    assert "model.width: 8 -> 16" in _line(out, "pretrain")
    assert "pretrain: runs again first" in _line(out, "embed_target")


def test_budget_change_reuses_scoring_and_reruns_select_onwards(tiny_run, tmp_path):
    """Only ``select.budget`` changed: pretraining, target embedding and scoring are kept as they are; the
    selection, its retraining and evaluation and the report run again. One method keeps it short."""
    import shutil

    from mak_ray.fingerprint import read_record

    cfg, _, _ = tiny_run
    src = RunLayout(cfg.run.output_uri)
    dst = RunLayout(str(tmp_path / "run"))
    shutil.copytree(src.root, dst.root)
    cfg2 = load_config(
        "configs/tiny.yaml",
        _cli_args(cfg, f"run.output_uri={dst.root}", "select.methods=[mak]", "select.budget=25")[2:],
    )
    kept = {s: read_record(dst.stage_dir(s)).output for s in ("pretrain", "embed_target", "score")}
    score_summary = storage.read_bytes(dst.scores.summary)
    target_only = storage.read_bytes(dst.metrics_json(TARGET_ONLY))
    before = {s: read_record(dst.part_dir(s, "mak")).output for s in ("select", "retrain", "evaluate")}

    run_pipeline(cfg2)
    assert {s: read_record(dst.stage_dir(s)).output for s in kept} == kept
    assert storage.read_bytes(dst.scores.summary) == score_summary
    assert storage.read_bytes(dst.metrics_json(TARGET_ONLY)) == target_only  # the pretrained model's
    for stage, old in before.items():
        assert read_record(dst.part_dir(stage, "mak")).output != old, stage
    assert len(read_selection_ids(dst.selection("mak"))) == 25
    assert storage.read_json(dst.summary)["selected"] == {"mak": 25}


# ------------------------------------------------------------------------------------------- faults


def _fork_run(tiny_run, root, overrides: list[str]):
    """A new run that reuses the tiny run's pretraining and target embedding (so only later stages run)."""
    import shutil
    from pathlib import Path

    cfg, _, _ = tiny_run
    src = RunLayout(cfg.run.output_uri)
    dst = RunLayout(str(Path(root) / "run"))
    for stage in ("pretrain", "embed_target"):
        shutil.copytree(src.stage_dir(stage), dst.stage_dir(stage))
    d = cfg.data
    return load_config(
        "configs/tiny.yaml",
        [
            f"data.target={d.target}",
            f"data.pool={d.pool}",
            f"data.eval_train={d.eval_train}",
            f"data.eval_test={d.eval_test}",
            f"run.output_uri={dst.root}",
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
    import shutil
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from mak_ray.score.markers import read_markers
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
        n_markers = read_markers(layout3.scores).num_rows  # finished shards
        os.killpg(proc.pid, 9)
    finally:
        proc.wait(timeout=30)
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert seen, "scoring never started before the time limit"
    n_shards = read_markers(RunLayout(cfg.run.output_uri).scores).num_rows
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
