"""Which stages of a run are done, stale or still to do, and why: the one answer that the pipeline (skip or
rerun), ``mak-ray status`` and ``--dry-run`` all use.

A *unit* is a stage, or one part of a stage made of parts (``select/<method>``, ``retrain/<method>``,
``evaluate/<model>``). A unit is done when its ``_SUCCESS`` exists and the fingerprint it would record now
equals the recorded one (:mod:`mak_ray.fingerprint`). Only markers, fingerprint records and input listings are
read here, never images or scores.

What a unit that is not done will do when it runs:

- ``resume``: its partial output was made with the same fingerprint (a run that was stopped), or only its input
  listing changed and the stage keeps finished shards (scoring a grown pool): finished work is kept;
- ``run``: anything it wrote before is deleted first, and it runs from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mak_ray.config import MakConfig
from mak_ray.fingerprint import (
    PENDING,
    Fingerprint,
    InputDigests,
    Record,
    changes,
    config_values,
    read_record,
)
from mak_ray.layout import RunLayout, done
from mak_ray.registry import STAGE_SPECS, STAGES

DONE, STALE, TODO = "done", "stale", "to do"
SKIP, RESUME, RUN = "skip", "resume", "run"
OUTPUT_VERSION = "mak-ray output version"  # the fingerprint entry of StageSpec.output_version


class StaleOutputs(RuntimeError):
    """A stage run on its own would read outputs of an earlier stage that are out of date."""


@dataclass
class UnitState:
    key: str  # "score", "select/mak"
    stage: str
    part: str | None
    dir: str  # the folder holding the unit's _SUCCESS and fingerprint record
    status: str  # DONE, STALE (finished, but from other settings or inputs) or TODO (not finished)
    action: str  # SKIP, RESUME or RUN
    reasons: list[str]
    expected: Fingerprint
    record: Record | None

    @property
    def done(self) -> bool:
        return self.status == DONE


@dataclass
class ShardCounts:
    """Scoring's shards: finished and still planned, planned but not finished, finished but no longer planned."""

    done: int
    to_add: int
    to_remove: int
    rows_to_add: int | None = None  # rows of the shards to add (None while a tar shard's count is unknown)
    rows_to_remove: int = 0  # rows of the finished shards to remove

    def rows_text(self) -> str:
        """The rows behind the shard counts: a shard to add whose objects a shard to remove holds unchanged
        gets their rows carried over, so at least ``rows_to_add - rows_to_remove`` rows are read and scored."""
        if not self.to_add:
            return ""
        add = "?" if self.rows_to_add is None else f"{self.rows_to_add:,}"
        text = f"; rows in the shards to add: {add}"
        if self.rows_to_remove:
            text += f", of which up to {self.rows_to_remove:,} carried over from the shards to remove"
            if self.rows_to_add is not None:
                text += f" (at least {max(0, self.rows_to_add - self.rows_to_remove):,} to score)"
        return text


@dataclass
class StageState:
    unit: UnitState
    parts: list[UnitState] = field(default_factory=list)
    shards: ShardCounts | None = None
    shard_error: str | None = None

    @property
    def name(self) -> str:
        return self.unit.stage

    @property
    def done(self) -> bool:
        return self.unit.done and all(p.done for p in self.parts)

    @property
    def status(self) -> str:
        if self.done:
            return DONE
        states = [self.unit.status, *(p.status for p in self.parts)]
        return STALE if STALE in states else TODO

    def units(self) -> list[UnitState]:
        return [*self.parts, self.unit]


def unit_key(stage: str, part: str | None = None) -> str:
    return stage if part is None else f"{stage}/{part}"


def unit_dir(layout: RunLayout, stage: str, part: str | None = None) -> str:
    return layout.stage_dir(stage) if part is None else layout.part_dir(stage, part)


def upstream_keys(stage: str, part: str | None, cfg: MakConfig) -> list[str]:
    """The outputs a unit reads: the stages it needs (for a part: the same part of a stage made of parts, when
    there is one), the stages it consumes, or, for a stage made of parts, its own parts."""
    spec = STAGE_SPECS[stage]
    if spec.parts and part is None:
        return [unit_key(stage, p) for p in spec.part_names(cfg.select.methods)]
    keys = []
    for need in (*spec.needs, *spec.consumes):
        need_spec = STAGE_SPECS[need]
        if part is not None and need_spec.parts:
            if part in need_spec.part_names(cfg.select.methods):
                keys.append(unit_key(need, part))
        else:
            keys.append(need)
    return keys


def _output_id(layout: RunLayout, key: str) -> str | None:
    """The id of a finished output; None while it is not finished."""
    stage, _, part = key.partition("/")
    path = unit_dir(layout, stage, part or None)
    if not done(path):
        return None
    rec = read_record(path)
    return rec.output if rec else None


def expected_fingerprint(
    stage: str,
    part: str | None,
    cfg: MakConfig,
    layout: RunLayout,
    digests: InputDigests,
    pending: frozenset[str] | set[str] = frozenset(),
) -> Fingerprint:
    """The fingerprint the unit would record if it ran now; upstream outputs in ``pending`` run again first."""
    spec = STAGE_SPECS[stage]
    upstream = {
        k: PENDING if k in pending else _output_id(layout, k) for k in upstream_keys(stage, part, cfg)
    }
    if spec.parts and part is None:
        return Fingerprint(upstream=upstream)
    inputs = {f"data.{name}": digests(getattr(cfg.data, name)) for name in spec.needs_data}
    config = config_values(cfg, spec.config)
    if spec.output_version > 1:
        config[OUTPUT_VERSION] = spec.output_version
    return Fingerprint(config, upstream, inputs)


def assess_unit(
    stage: str,
    part: str | None,
    cfg: MakConfig,
    layout: RunLayout,
    digests: InputDigests,
    pending: frozenset[str] | set[str] = frozenset(),
    force: bool = False,
) -> UnitState:
    spec = STAGE_SPECS[stage]
    path = unit_dir(layout, stage, part)
    expected = expected_fingerprint(stage, part, cfg, layout, digests, pending)
    record = read_record(path)
    if record is not None:  # an input the config leaves unset (a stage run on its own) cannot be compared
        unset = {k: v for k, v in record.fingerprint.inputs.items() if expected.inputs.get(k, "") is None}
        expected = replace(expected, inputs={**expected.inputs, **unset})
    finished = done(path)
    same = record is not None and record.digest == expected.digest
    if finished and same and not force:
        return UnitState(unit_key(stage, part), stage, part, path, DONE, SKIP, [], expected, record)
    if record is None:
        reasons = ["no fingerprint recorded (finished by an older version)"] if finished else []
    else:
        # a stage made of parts: the parts that run again give their own reasons
        reasons = [
            str(c)
            for c in changes(record.fingerprint, expected)
            if not (spec.parts and part is None and c.key in pending and c.key in record.fingerprint.upstream)
        ]
    if force:
        reasons = ["forced", *reasons]
    status = STALE if finished else TODO
    action = RUN
    if record is not None and not force and not (spec.parts and part is None):
        inputs_only = (
            record.fingerprint.config == expected.config and record.fingerprint.upstream == expected.upstream
        )
        if (same and not finished) or (inputs_only and spec.resumes_on_new_inputs):
            action = RESUME
    return UnitState(unit_key(stage, part), stage, part, path, status, action, reasons, expected, record)


def assess_stage(
    stage: str,
    cfg: MakConfig,
    layout: RunLayout,
    digests: InputDigests,
    pending: frozenset[str] | set[str] = frozenset(),
    force: bool = False,
) -> StageState:
    """The stage and each of its parts; a part that is not done counts as running again for the stage."""
    spec = STAGE_SPECS[stage]
    parts = [
        assess_unit(stage, p, cfg, layout, digests, pending, force)
        for p in spec.part_names(cfg.select.methods)
    ]
    own_pending = set(pending) | {p.key for p in parts if not p.done}
    unit = assess_unit(stage, None, cfg, layout, digests, own_pending, force)
    return StageState(unit, parts)


def plan_stages(
    cfg: MakConfig, layout: RunLayout, digests: InputDigests, stages: tuple[str, ...] = STAGES
) -> list[StageState]:
    """The state of ``stages`` (in pipeline order) as a run of all of them would find it: a stage after one that
    runs again is stale too. Scoring's state carries its shard counts."""
    pending: set[str] = set()
    out = []
    for name in (s for s in STAGES if s in stages):
        state = assess_stage(name, cfg, layout, digests, pending)
        pending |= {u.key for u in state.units() if not u.done}
        if name == "score":
            try:
                state.shards = score_shards(cfg, layout, state.unit)
            except (ValueError, FileNotFoundError) as e:
                state.shard_error = str(e)
        out.append(state)
    return out


def ancestors(stage: str) -> tuple[str, ...]:
    """Every stage whose outputs ``stage`` needs, directly or through another stage, in pipeline order."""
    seen: set[str] = set()
    todo = list(STAGE_SPECS[stage].needs)
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(STAGE_SPECS[s].needs)
    return tuple(s for s in STAGES if s in seen)


def refuse_stale_needs(stage: str, cfg: MakConfig, layout: RunLayout, digests: InputDigests) -> None:
    """Raise :class:`StaleOutputs` when a stage run on its own would read out-of-date outputs (a finished earlier
    stage whose config, inputs or upstream changed). Unfinished ones are left to the preflight's message."""
    for state in plan_stages(cfg, layout, digests, ancestors(stage)):
        if state.status == STALE:
            raise StaleOutputs(
                f"stage '{stage}' reads the outputs of stage '{state.name}', which are stale ("
                f"{'; '.join(reasons(state))}); run `mak-ray {STAGE_SPECS[state.name].command}` or "
                "`mak-ray pipeline` first"
            )


def reasons(state: StageState) -> list[str]:
    """The reasons of a stage and its parts, each part's prefixed with its name."""
    out = list(state.unit.reasons) if not state.parts else []
    for p in state.parts:
        out += [f"{p.key}: {r}" for r in p.reasons]
    return out


def score_shards(cfg: MakConfig, layout: RunLayout, unit: UnitState) -> ShardCounts:
    """Scoring's shards from its markers and the planned shards of the pool (the planner lists the pool and, for
    Parquet, reads footers; no image is read). A unit that runs from the start keeps none of its shards."""
    from mak_ray.data.manifest import survey_input
    from mak_ray.score.engine import shard_delta

    delta = shard_delta(survey_input(cfg.data.pool, cfg.data), layout.scores)
    if unit.action == RUN:  # nothing is kept or carried over
        return ShardCounts(0, delta["done"] + delta["to_add"], delta["done"] + delta["to_remove"])
    return ShardCounts(
        delta["done"], delta["to_add"], delta["to_remove"], delta["rows_to_add"], delta["rows_to_remove"] or 0
    )


def describe(states: list[StageState], as_plan: bool = False) -> list[str]:
    """Text lines, one per stage and part: ``done`` / ``stale: reasons`` / ``to do`` (with ``as_plan``: what
    a run would do: ``skip``, ``run`` or ``resume``, with the same reasons)."""
    width = max([len(u.key) + (2 if u.part else 0) for s in states for u in s.units()] + [12]) + 2
    lines = []

    def line(indent: str, key: str, status: str, action: str, why: list[str]) -> str:
        word = status
        if as_plan:
            word = {SKIP: "skip (done)", RESUME: "resume", RUN: "run"}[action]
            if status == STALE:
                word += " (stale)"
        text = f"{indent}{key:<{width - len(indent)}}{word}"
        return text + (": " + "; ".join(why) if why else "")

    for s in states:
        if not s.parts:
            lines.append(line("", s.name, s.unit.status, s.unit.action, s.unit.reasons))
        else:
            action = SKIP if s.done else RUN
            lines.append(line("", s.name, s.status, action, []))
            lines += [line("  ", p.key, p.status, p.action, p.reasons) for p in s.parts]
        if s.shards is not None:
            c = s.shards
            lines.append(
                f"  {'shards':<{width - 2}}{c.done} done, {c.to_add} to add, {c.to_remove} to remove"
                + (" (the finished ones are deleted first)" if s.unit.action == RUN and c.to_remove else "")
                + c.rows_text()
            )
        elif s.shard_error:
            lines.append(f"  {'shards':<{width - 2}}cannot plan the pool: {s.shard_error}")
    return lines
