"""Run-level helpers for tests that write a stage's outputs themselves instead of running the stage."""

from __future__ import annotations

from mak_ray.config import MakConfig
from mak_ray.fingerprint import InputDigests, write_record
from mak_ray.layout import RunLayout, mark_done
from mak_ray.runstate import expected_fingerprint


def record_done(cfg: MakConfig, stage: str, summary: dict | None = None) -> None:
    """Mark ``stage`` done with the fingerprint the pipeline would record for it now, so that later stages
    (and their standalone runs, which refuse stale earlier outputs) take the outputs the test wrote as current."""
    layout = RunLayout(cfg.run.output_uri)
    path = layout.stage_dir(stage)
    write_record(path, expected_fingerprint(stage, None, cfg, layout, InputDigests(cfg.data)))
    mark_done(path, summary)
