"""The order of the stages, the checks before a run, skip-when-done, timings and the run summary.

Each stage (:mod:`mak_ray.stages`) writes its outputs and then a ``_SUCCESS`` marker holding its summary; a
rerun skips every stage whose marker exists, so a killed pipeline resumes at the first unfinished stage (and
the scorer resumes at shard level inside its stage). The CLI, the Ray jobs and the tests all call
:func:`run_stage` / :func:`run_pipeline`.
"""

from __future__ import annotations

import importlib
import logging
import time

from mak_ray import storage
from mak_ray.config import ConfigError, MakConfig, dump_config
from mak_ray.layout import RunLayout, done, mark_done
from mak_ray.registry import STAGE_SPECS, STAGES
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


def known_inputs(uri: str, cfg: MakConfig) -> int | None:
    """How many inputs ``uri`` holds, when cheap to know (image files, Parquet row counts); else None."""
    from mak_ray.data import plan_from_config

    total = 0
    for shard in plan_from_config(uri, cfg.data):
        if shard.known_rows is None:
            return None
        total += shard.known_rows
    return total


def preflight(cfg: MakConfig, stages: tuple[str, ...]) -> None:
    """Refuse, before any heavy work, a run that cannot finish: missing inputs, earlier outputs or budget."""
    layout = RunLayout(cfg.run.output_uri)
    planned = set(stages)
    for stage in stages:
        for name in STAGE_SPECS[stage].needs_data:
            uri = getattr(cfg.data, name)
            if not uri:
                raise ConfigError(f"data.{name}", f"stage '{stage}' needs it, but it is empty")
            if not storage.exists(uri):
                raise ConfigError(f"data.{name}", f"{uri} does not exist (stage '{stage}' reads it)")
    if {"score", "select"} & planned and not done(layout.stage_dir("select")):
        try:
            n_pool = (
                known_inputs(cfg.data.pool, cfg) if cfg.data.pool and storage.exists(cfg.data.pool) else None
            )
        except ValueError as e:  # no inputs, mixed formats
            raise ConfigError("data.pool", str(e)) from e
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


def run_stage(name: str, cfg: MakConfig, *, force: bool = False, checked: bool = False) -> str:
    """Run one stage unless its outputs are complete. Returns the stage's output folder."""
    if name not in STAGE_SPECS:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    layout = RunLayout(cfg.run.output_uri)
    stage_dir = layout.stage_dir(name)
    if done(stage_dir) and not force:
        log.info("%s: outputs complete under %s, skipped", name, stage_dir)
        return stage_dir
    if not checked:
        preflight(cfg, (name,))
    storage.write_text(layout.config, dump_config(cfg))
    if name != "report":
        init_ray(cfg.run.ray_address)
    log.info("%s: starting", name)
    t0 = time.perf_counter()
    stage = importlib.import_module(f"mak_ray.stages.{STAGE_SPECS[name].module}")
    summary = stage.run(cfg, layout)
    mark_done(stage_dir, summary)
    seconds = time.perf_counter() - t0
    _record_time(layout, name, seconds)
    write_run_summary(cfg, layout)
    log.info("%s: done in %.1f s -> %s", name, seconds, stage_dir)
    return stage_dir


def run_pipeline(cfg: MakConfig) -> str:
    """All stages in order; completed ones are skipped, so a rerun resumes. Returns the report's path."""
    preflight(cfg, STAGES)
    for name in STAGES:
        run_stage(name, cfg, checked=True)
    report = RunLayout(cfg.run.output_uri).report_file("index.html")
    log.info("pipeline complete: report at %s", report)
    return report
