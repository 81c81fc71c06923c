"""The order of the stages, the checks before a run, skip-when-done, timings and the run summary.

Each stage (:mod:`mak_ray.stages`) writes its outputs and then a ``_SUCCESS`` marker holding its summary;
beside it, the stage's fingerprint record says what the output was made from (:mod:`mak_ray.fingerprint`).
A rerun skips a stage only when it is done and its fingerprint still matches (:mod:`mak_ray.runstate`); a
stage whose config fields, inputs or upstream outputs changed runs again, and so does every stage after it,
with the reason in the log. A killed pipeline resumes at the first unfinished stage (and the scorer at shard
level inside its stage). The CLI, the Ray jobs and the tests all call :func:`run_stage` / :func:`run_pipeline`;
``--dry-run`` calls :func:`dry_run`.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable

from mak_ray import storage
from mak_ray.config import ConfigError, MakConfig, dump_config
from mak_ray.fingerprint import InputDigests, write_record
from mak_ray.layout import RunLayout, done, fingerprint_file, mark_done, success_marker
from mak_ray.registry import STAGE_SPECS, STAGES
from mak_ray.runstate import (
    RESUME,
    RUN,
    STALE,
    StageState,
    UnitState,
    assess_stage,
    describe,
    expected_fingerprint,
    plan_stages,
    refuse_stale_needs,
    score_shards,
)
from mak_ray.runtime import init_ray

log = logging.getLogger(__name__)


def _record_time(layout: RunLayout, stage: str, seconds: float) -> None:
    timings = storage.read_json(layout.timings) if storage.exists(layout.timings) else {"stages": {}}
    timings["stages"][stage] = round(seconds, 2)
    storage.write_json(layout.timings, timings)


def write_run_summary(cfg: MakConfig, layout: RunLayout) -> dict:
    """Accounting for the whole run: inputs seen, scored, failed by reason, selected per method."""
    summary: dict = {"output_uri": cfg.run.output_uri}
    if storage.exists(layout.scores.summary):
        s = storage.read_json(layout.scores.summary)
        summary.update({k: s.get(k) for k in ("inputs", "scored", "failed", "failed_by_reason")})
    selected = {}
    for method in cfg.select.methods:
        sel = layout.selection(method)
        if storage.exists(sel.summary):
            selected[method] = storage.read_json(sel.summary).get("selected")
    summary["selected"] = selected
    storage.write_json(layout.summary, summary)
    return summary


# ------------------------------------------------------------------------------------------- preflight


def preflight(cfg: MakConfig, stages: tuple[str, ...]) -> None:
    """Refuse, before any heavy work, a run that cannot finish: missing or empty inputs, earlier outputs, or a
    budget over the pool. Inputs get a bounded look (:func:`mak_ray.data.peek.peek_input`), never a full
    listing; the pool's size comes from its plan when an earlier run made one for these settings, else from
    the look when it saw the whole pool."""
    from mak_ray.data.manifest import read_plan, settings_of
    from mak_ray.data.peek import Peek, peek_input

    layout = RunLayout(cfg.run.output_uri)
    planned = set(stages)
    init = cfg.model.init_checkpoint
    if init and {"pretrain", "retrain"} & planned and not storage.exists(init):
        raise ConfigError("model.init_checkpoint", f"{init} does not exist")
    looks: dict[str, Peek] = {}

    def look(name: str, stage: str) -> Peek:
        uri = getattr(cfg.data, name)
        if name not in looks:
            try:
                looks[name] = peek_input(uri, cfg.data)
            except FileNotFoundError as e:
                raise ConfigError(f"data.{name}", f"{uri} does not exist (stage '{stage}' reads it)") from e
            except ValueError as e:  # mixed formats
                raise ConfigError(f"data.{name}", str(e)) from e
            if looks[name].exhausted and not looks[name].inputs:
                raise ConfigError(f"data.{name}", f"no {cfg.data.format} inputs found under {uri}")
        return looks[name]

    for stage in stages:
        for name in STAGE_SPECS[stage].needs_data:
            if not getattr(cfg.data, name):
                raise ConfigError(f"data.{name}", f"stage '{stage}' needs it, but it is empty")
            look(name, stage)
    if {"score", "select"} & planned and not done(layout.stage_dir("select")) and cfg.data.pool:
        plan = read_plan(layout.plan("pool"))
        if plan is not None and plan.uri == cfg.data.pool and plan.settings == settings_of(cfg.data):
            n_pool = plan.input_rows
        elif storage.exists(cfg.data.pool):
            n_pool = look("pool", "score").rows
        else:
            n_pool = None
        if n_pool is not None and cfg.select.budget > n_pool:
            raise ConfigError(
                "select.budget", f"{cfg.select.budget} is larger than the pool ({n_pool} images)"
            )
    for stage in stages:
        for need in STAGE_SPECS[stage].needs:
            if need not in planned and not done(layout.stage_dir(need)):
                raise FileNotFoundError(
                    f"stage '{stage}' needs the outputs of stage '{need}', which are not complete under "
                    f"{layout.stage_dir(need)}; run `mak-ray {STAGE_SPECS[need].command}` or "
                    "`mak-ray pipeline` first"
                )


# ------------------------------------------------------------------------------------------- drivers


def _stage_runner(name: str) -> Callable[[MakConfig, RunLayout], dict]:
    return importlib.import_module(f"mak_ray.stages.{STAGE_SPECS[name].module}").run


def _prepare(unit: UnitState, layout: RunLayout) -> None:
    """Make ``unit`` ready to run: keep its finished work when it resumes, delete everything it wrote before
    otherwise; then record the fingerprint it runs with (a new output id) before it writes anything."""
    storage.delete(success_marker(unit.dir))
    if unit.action == RUN:
        for uri in layout.outputs(unit.stage, unit.part):
            storage.delete(uri)
    elif unit.record is not None and unit.record.digest == unit.expected.digest:
        log.info("%s: resuming the output of an interrupted run", unit.key)
        return
    write_record(unit.dir, unit.expected)


def _log_state(state: StageState) -> None:
    for unit in state.units():
        if unit.status == STALE and unit.reasons:
            log.warning("%s: stale (%s); it runs again", unit.key, "; ".join(unit.reasons))
        if unit.action == RESUME and unit.status == STALE:
            log.info("%s: only its inputs changed: keeping the finished shards still in them", unit.key)


def run_stage(
    name: str,
    cfg: MakConfig,
    *,
    force: bool = False,
    checked: bool = False,
    digests: InputDigests | None = None,
) -> str:
    """Run one stage unless it is done: its outputs are complete and its fingerprint matches. Stale parts are
    redone, finished parts that are current are kept. ``checked``: the caller ran the preflight and the stages
    before this one. Returns the stage's output folder."""
    if name not in STAGE_SPECS:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    spec = STAGE_SPECS[name]
    layout = RunLayout(cfg.run.output_uri)
    digests = digests or InputDigests(cfg.data)
    stage_dir = layout.stage_dir(name)
    if not checked:
        refuse_stale_needs(name, cfg, layout, digests)
    state = assess_stage(name, cfg, layout, digests, force=force)
    if state.done:
        log.info("%s: outputs complete and current under %s, skipped", name, stage_dir)
        return stage_dir
    if not checked:
        preflight(cfg, (name,))
    _log_state(state)
    storage.write_text(layout.config, dump_config(cfg))
    if spec.parts:
        storage.delete(success_marker(stage_dir))
        storage.delete(fingerprint_file(stage_dir))
        for part in state.parts:
            if not part.done:
                _prepare(part, layout)
    else:
        _prepare(state.unit, layout)
    if name != "report":
        init_ray(cfg.run.ray_address)
    log.info("%s: starting", name)
    t0 = time.perf_counter()
    summary = _stage_runner(name)(cfg, layout)
    if spec.parts:  # the stage's own record names the output ids of its parts, known only now
        write_record(stage_dir, expected_fingerprint(name, None, cfg, layout, digests))
    mark_done(stage_dir, summary)
    seconds = time.perf_counter() - t0
    _record_time(layout, name, seconds)
    write_run_summary(cfg, layout)
    log.info("%s: done in %.1f s -> %s", name, seconds, stage_dir)
    return stage_dir


def run_pipeline(cfg: MakConfig) -> str:
    """All stages in order; a stage is skipped while it is done and current, so a rerun resumes, and a change of
    config or inputs reruns the stages it affects. Returns the report's path."""
    preflight(cfg, STAGES)
    digests = InputDigests(cfg.data)
    for name in STAGES:
        run_stage(name, cfg, checked=True, digests=digests)
    report = RunLayout(cfg.run.output_uri).report_file("index.html")
    log.info("pipeline complete: report at %s", report)
    return report


# ------------------------------------------------------------------------------------------- plans


def describe_inputs(cfg: MakConfig, stages: tuple[str, ...]) -> list[str]:
    """One line per input the ``stages`` read: its size and shards, from a listing (no image is read, nothing
    written)."""
    from mak_ray.data.manifest import survey_input

    lines = []
    names = [
        n
        for n in ("target", "pool", "eval_train", "eval_test")
        if any(n in STAGE_SPECS[s].needs_data for s in stages)
    ]
    for name in names:
        uri = getattr(cfg.data, name)
        plan = survey_input(uri, cfg.data)
        rows = plan.input_rows
        size = f"{rows:,} images" if rows is not None else "images counted when read"
        n = f"{plan.shards:,} shard{'s' if plan.shards != 1 else ''}"
        lines.append(f"data.{name}: {size} in {n} ({plan.format}) at {uri}")
    return lines


def dry_run(cfg: MakConfig, stages: tuple[str, ...] = STAGES) -> list[str]:
    """Check the config and the inputs as a run of ``stages`` would, without running anything, and return the
    plan as text: the inputs (size, shards), then each stage (skip, run or resume, and why)."""
    layout = RunLayout(cfg.run.output_uri)
    digests = InputDigests(cfg.data)
    if len(stages) == 1:
        refuse_stale_needs(stages[0], cfg, layout, digests)
    preflight(cfg, stages)
    if len(stages) == 1:
        states = [assess_stage(stages[0], cfg, layout, digests)]
        if stages[0] == "score":
            states[0].shards = score_shards(cfg, layout, states[0].unit)
    else:
        states = plan_stages(cfg, layout, digests, stages)
    head = [f"run: {cfg.run.output_uri}", *describe_inputs(cfg, stages), "plan:"]
    return head + describe(states, as_plan=True)
