"""Stage fingerprints decide what a rerun skips, what it redoes and what ``mak-ray status`` says, with stand-in
stages: the real pipeline driver, registry, run layout, planner and markers, but stage bodies that only record
that they ran and write a marker per part or shard the way the real ones do. The real stages are checked on
the tiny pipeline in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mak_ray import pipeline, storage
from mak_ray.cli import main as cli_main
from mak_ray.config import MakConfig, load_config
from mak_ray.data.manifest import plan_for
from mak_ray.fingerprint import InputDigests, read_record
from mak_ray.layout import RunLayout, done, mark_done
from mak_ray.registry import STAGE_SPECS, STAGES, TARGET_ONLY
from mak_ray.runstate import DONE, STALE, TODO, StaleOutputs, plan_stages
from tests.samples import encode, random_image

METHODS = ["mak", "random"]


class FakeStages:
    """Stand-ins for ``mak_ray.stages.<stage>.run``: each call records what it did. Parts skip when done, as
    the real stages do; scoring marks the planned shards that have no marker and drops the unplanned ones, as
    the scoring engine does."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.fail_in: str | None = None

    def runner(self, name: str):
        def run(cfg: MakConfig, layout: RunLayout) -> dict:
            spec = STAGE_SPECS[name]
            if spec.parts:
                for part in spec.part_names(cfg.select.methods):
                    path = layout.part_dir(name, part)
                    if not done(path):
                        self.ran.append(f"{name}/{part}")
                        storage.write_text(storage.join(path, "out.txt"), part)
                        mark_done(path)
                return {}
            self.ran.append(name)
            if name == "score":
                return self._score(cfg, layout)
            storage.write_text(storage.join(layout.stage_dir(name), "partial.txt"), "x")
            if self.fail_in == name:
                raise RuntimeError(f"{name} stopped")
            return {}

        return run

    def _score(self, cfg: MakConfig, layout: RunLayout) -> dict:
        import pyarrow as pa
        import pyarrow.compute as pc

        from mak_ray.score import markers

        out = layout.scores
        planned = _planned(cfg)
        marked = markers.read_markers(out)
        have = set(marked.column("shard").to_pylist())
        if have - planned:
            markers.rewrite(
                out, marked.filter(pc.is_in(marked["shard"], value_set=pa.array(sorted(planned))))
            )
        writer = markers.MarkerWriter(out)
        for sid in sorted(planned - have):
            self.ran.append(f"score/shard={sid}")
            writer.add(sid, 1, 1, {})
        writer.flush()
        return {}

    def reset(self) -> list[str]:
        ran, self.ran = self.ran, []
        return ran


def _planned(cfg: MakConfig) -> set[str]:
    """The pool's planned shard ids (the planner's cut, whatever it is)."""
    return set(plan_for(cfg, cfg.data.pool).shard_table().column("shard").to_pylist())


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(random_image(np.random.default_rng(seed), 8), "PNG"))


@pytest.fixture
def run(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for i in range(6):
        _png(data / "target" / f"c{i % 2}" / f"t{i}.png", i)
    for i in range(9):
        _png(data / "pool" / f"p{i}.png", 100 + i)
    for split in ("eval_train", "eval_test"):
        for i in range(4):
            _png(data / split / f"c{i % 2}" / f"e{i}.png", 200 + i)
    fake = FakeStages()
    monkeypatch.setattr(pipeline, "_stage_runner", fake.runner)
    monkeypatch.setattr(pipeline, "init_ray", lambda *a, **k: None)
    base = [f"data.{name}={data / name}" for name in ("target", "pool", "eval_train", "eval_test")] + [
        f"run.output_uri={tmp_path / 'run'}",
        "data.files_per_shard=3",
        "select.budget=2",
        f"select.methods=[{','.join(METHODS)}]",
    ]

    def config(*over: str) -> MakConfig:
        return load_config(None, [*base, *over])

    pipeline.run_pipeline(config())
    assert fake.reset()  # the first run ran everything
    return fake, config, data, tmp_path


def _states(cfg: MakConfig) -> dict[str, object]:
    states = plan_stages(cfg, RunLayout(cfg.run.output_uri), InputDigests(cfg.data))
    out = {}
    for s in states:
        out[s.name] = s
        for p in s.parts:
            out[p.key] = p
    return out


def _every(stage: str, parts: list[str]) -> list[str]:
    return [f"{stage}/{p}" for p in parts]


LATER = [*_every("select", METHODS), *_every("retrain", METHODS), *_every("evaluate", METHODS), "report"]


def _overrides(cfg: MakConfig) -> list[str]:
    """The config as ``key=value`` overrides, for the CLI."""
    d = cfg.data
    return [
        f"data.target={d.target}",
        f"data.pool={d.pool}",
        f"data.eval_train={d.eval_train}",
        f"data.eval_test={d.eval_test}",
        f"run.output_uri={cfg.run.output_uri}",
        f"data.files_per_shard={d.files_per_shard}",
        f"select.budget={cfg.select.budget}",
        f"select.methods=[{','.join(cfg.select.methods)}]",
        f"score.views={cfg.score.views}",
        f"model.width={cfg.model.width}",
        f"run.seed={cfg.run.seed}",
    ]


def test_a_rerun_with_nothing_changed_runs_nothing_and_status_says_done(run, capsys):
    fake, config, _, tmp = run
    pipeline.run_pipeline(config())
    assert fake.reset() == []
    code = cli_main(["status", *_overrides(config())])
    out = capsys.readouterr().out
    assert code == 0, out
    for stage in STAGES:
        assert any(line.split()[:2] == [stage, DONE] for line in out.splitlines()), (stage, out)
    n = len(_planned(config()))
    assert "shards" in out and f"{n} done, 0 to add, 0 to remove" in out


@pytest.mark.parametrize(
    ("override", "first", "reason"),
    [
        ("score.views=6", "score", "score.views: 10 -> 6"),
        ("model.width=16", "pretrain", "model.width: 64 -> 16"),
        ("run.seed=3", "pretrain", "run.seed: 0 -> 3"),
    ],
)
def test_a_config_change_reruns_its_stage_and_every_later_one(run, capsys, override, first, reason):
    fake, config, _, _ = run
    cfg = config(override)
    code = cli_main(["status", *_overrides(cfg)])
    out = capsys.readouterr().out
    assert code == 1
    line = next(x for x in out.splitlines() if x.split()[:1] == [first])
    assert STALE in line and reason in line, out
    states = _states(cfg)
    order = STAGES.index(first)
    for stage in STAGES:
        assert (states[stage].status == DONE) == (STAGES.index(stage) < order), (stage, out)
    # the stage right after names the one before it as the reason
    after = STAGES[order + 1]
    after_lines = [x for x in out.splitlines() if x.split()[:1] and x.split()[0].split("/")[0] == after]
    assert any(f"{first}: runs again first" in x for x in after_lines), out

    pipeline.run_pipeline(cfg)
    ran = fake.reset()
    expected_stages = [s for s in STAGES[order:] if not STAGE_SPECS[s].parts]
    for stage in expected_stages:
        assert stage in ran, (stage, ran)
    for key in LATER:
        assert key in ran, (key, ran)
    assert all(s not in ran for s in STAGES[:order])
    if first == "score":  # the target-only model is the pretrained one: its evaluation is current
        assert f"evaluate/{TARGET_ONLY}" not in ran
        assert sum(k.startswith("score/shard=") for k in ran) == len(_planned(cfg))  # scored from the start
    else:
        assert f"evaluate/{TARGET_ONLY}" in ran
    pipeline.run_pipeline(cfg)
    assert fake.reset() == []


def test_a_changed_target_set_reruns_everything_and_status_names_the_input(run, capsys):
    fake, config, data, _ = run
    _png(data / "target" / "c0" / "new.png", 999)
    cfg = config()
    assert cli_main(["status", *_overrides(cfg)]) == 1
    out = capsys.readouterr().out
    assert "data.target: the input changed" in out
    assert all(
        s.status == STALE for s in plan_stages(cfg, RunLayout(cfg.run.output_uri), InputDigests(cfg.data))
    )
    pipeline.run_pipeline(cfg)
    ran = fake.reset()
    assert [s for s in STAGES if s in ran] == [s for s in STAGES if not STAGE_SPECS[s].parts]


def test_only_the_budget_changed_reuses_scoring(run, capsys):
    fake, config, _, _ = run
    cfg = config("select.budget=3")
    assert cli_main(["pipeline", *_overrides(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "select.budget: 2 -> 3" in out
    for stage in ("pretrain", "embed_target", "score"):
        assert next(x for x in out.splitlines() if x.split()[:1] == [stage]).split()[1] == "skip", out
    assert fake.reset() == []  # a dry run runs nothing

    layout = RunLayout(cfg.run.output_uri)
    score_id = read_record(layout.stage_dir("score")).output
    pipeline.run_pipeline(cfg)
    ran = fake.reset()
    assert ran == [
        *_every("select", METHODS),
        *_every("retrain", METHODS),
        *_every("evaluate", METHODS),
        "report",
    ]
    assert read_record(layout.stage_dir("score")).output == score_id


def test_a_grown_pool_keeps_the_finished_shards_and_reruns_what_reads_them(run, capsys):
    fake, config, data, _ = run
    layout = RunLayout(config().run.output_uri)
    markers = sorted(Path(layout.scores.markers_dir).iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in markers}
    before = _planned(config())
    for i in range(3):  # a new sub-folder: its own new shards, the others untouched
        _png(data / "pool" / "zz-new" / f"n{i}.png", 500 + i)
    cfg = config()
    new = _planned(cfg) - before
    assert before < _planned(cfg) and new
    assert cli_main(["status", *_overrides(cfg)]) == 1
    out = capsys.readouterr().out
    assert "data.pool: the input changed" in out
    assert f"{len(before)} done, {len(new)} to add, 0 to remove" in out
    states = _states(cfg)
    assert states["score"].unit.action == "resume"
    assert states["pretrain"].status == DONE and states["embed_target"].status == DONE

    pipeline.run_pipeline(cfg)
    ran = fake.reset()
    assert "score" in ran
    assert sorted(k for k in ran if k.startswith("score/shard=")) == sorted(f"score/shard={s}" for s in new)
    assert all(k in ran for k in LATER)
    for p in markers:
        assert p.stat().st_mtime_ns == mtimes[p.name]  # finished shards were not redone


def test_a_shrunk_pool_counts_the_shards_to_remove(run, capsys):
    _, config, data, _ = run
    before = _planned(config())
    for p in sorted((data / "pool").glob("p*.png"))[-3:]:
        p.unlink()
    cfg = config()
    after = _planned(cfg)
    assert cli_main(["status", *_overrides(cfg)]) == 1
    counts = f"{len(after & before)} done, {len(after - before)} to add, {len(before - after)} to remove"
    assert before - after and counts in capsys.readouterr().out


def test_a_new_method_runs_only_its_own_parts(run):
    fake, config, _, _ = run
    cfg = config("select.methods=[mak,random,tailness]")
    states = _states(cfg)
    assert states["select/mak"].status == DONE and states["select/tailness"].status == TODO
    assert "select/tailness: new in the run" in states["select"].unit.reasons
    pipeline.run_pipeline(cfg)
    assert fake.reset() == ["select/tailness", "retrain/tailness", "evaluate/tailness", "report"]


def test_a_stage_run_alone_refuses_stale_earlier_outputs(run, capsys):
    _, config, data, _ = run
    _png(data / "target" / "c1" / "new.png", 998)
    cfg = config()
    with pytest.raises(StaleOutputs, match="'pretrain', which are stale .*data.target"):
        pipeline.run_stage("score", cfg)
    assert cli_main(["select", *_overrides(cfg)]) == 3
    assert "stale" in capsys.readouterr().err


def test_an_interrupted_stage_resumes_only_with_the_same_fingerprint(run):
    fake, config, _, _ = run
    cfg = config("model.width=16")
    fake.fail_in = "pretrain"
    with pytest.raises(RuntimeError, match="pretrain stopped"):
        pipeline.run_pipeline(cfg)
    partial = Path(RunLayout(cfg.run.output_uri).stage_dir("pretrain")) / "partial.txt"
    assert partial.exists()
    fake.fail_in = None
    # same settings: the partial output is kept for the stage to resume from (Ray Train's checkpoints)
    states = _states(cfg)
    assert states["pretrain"].status == TODO and states["pretrain"].unit.action == "resume"
    # other settings: it is deleted before the stage starts again
    states = _states(config("model.width=32"))
    assert states["pretrain"].unit.action == "run"
    fake.reset()
    pipeline.run_pipeline(cfg)
    assert "pretrain" in fake.reset()


def test_a_run_without_fingerprints_is_stale(run):
    fake, config, _, tmp = run
    for f in Path(tmp / "run").rglob("_FINGERPRINT.json"):
        f.unlink()
    states = _states(config())
    assert states["pretrain"].status == STALE
    assert "no fingerprint recorded" in states["pretrain"].unit.reasons[0]
    pipeline.run_pipeline(config())
    assert "pretrain" in fake.reset()


def test_execution_settings_do_not_invalidate(run):
    fake, config, _, _ = run
    cfg = config(
        "score.num_actors=3", "score.batch_size=7", "pretrain.checkpoint_every=2", "data.read_cpus=1"
    )
    pipeline.run_pipeline(cfg)
    assert fake.reset() == []


def test_a_new_output_version_reruns_its_stage(run, monkeypatch):
    """A mak-ray version that writes more into a stage's output (score's nn_distance) redoes older outputs."""
    import dataclasses

    fake, config, _, _ = run
    pipeline.run_pipeline(config())
    fake.reset()
    spec = STAGE_SPECS["score"]
    monkeypatch.setitem(
        STAGE_SPECS, "score", dataclasses.replace(spec, output_version=spec.output_version + 1)
    )
    states = _states(config())
    assert states["embed_target"].status == DONE and states["score"].status == STALE
    want = f"mak-ray output version: {spec.output_version} -> {spec.output_version + 1}"
    assert any(want in r for r in states["score"].unit.reasons), states["score"].unit.reasons
