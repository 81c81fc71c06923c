"""Gather the numbers a report shows from a run's outputs (layout: docs/ARCHITECTURE.md), tolerating gaps.

Every reader returns ``None`` (and notes what is missing) instead of raising, so a run that stopped after
scoring still gets a report saying which parts are absent. Labels are read only here, for reporting.

The pool is never loaded: one streamed pass over its small columns gives the counts (scored, failed, per
label), a seeded uniform sample of at most ``SCATTER_ROWS`` rows for the scatter plot, and the label, ECLE and
proximity of each selected id; memory is set by the batch, the sample and the selections, not by the pool.

Definitions used in the report:

- **OOD share** of a selection: picks whose pool label starts with ``ood`` / all picks. Each OOD label is
  one **OOD kind**; the share per kind is that kind's picks / all picks.
- **Diagnostics**: the score stage's label-free ``score/diagnostics.json`` (does the model separate the pool
  from the target?), read as it is; runs scored before it existed have none, and the report says so.
- **Tail classes**: the classes in the evaluation's ``few`` group (from ``metrics.json`` or, failing that,
  the run's ``evaluate`` thresholds applied to the target counts); if that group is empty, the lower half of
  the classes by target count. **Tail share** = picks whose label is a tail class / all picks (OOD included
  in the denominator, so junk dilutes it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from mak_ray import storage
from mak_ray.labels import is_ood
from mak_ray.layout import RunLayout
from mak_ray.registry import METHODS, TARGET_ONLY

log = logging.getLogger(__name__)

UNLABELED = "(unlabeled)"
MODEL_ORDER = (TARGET_ONLY, *METHODS)
SETTING_KEYS = {"full": ("full", "linear"), "few_shot": ("few_shot", "fewshot", "few-shot")}
ACC_COLUMNS = ("overall", "many", "medium", "few", "group_std", "class_std")
SCATTER_ROWS = 20_000
DIAGNOSTICS = "diagnostics.json"  # written by the score stage beside its summary
SAMPLE_SEED = 0


def ordered(names: list[str], preferred: tuple[str, ...]) -> list[str]:
    first = [n for n in preferred if n in names]
    return first + sorted(n for n in names if n not in preferred)


@dataclass
class ReportedSelection:
    """One method's picks with the pool's label, ECLE and proximity of each."""

    method: str
    ids: list[str]
    labels: list[str | None]  # pool label of each pick, None when the id is not in the scored pool
    ecle: np.ndarray
    proximity: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolSummary:
    """The scored pool as streamed aggregates, and a seeded sample of its scored rows."""

    scored: int
    failed: int
    labelled: int  # scored rows with a label
    class_counts: dict[str, int]  # per label of the scored rows (UNLABELED for none)
    sample: pa.Table  # label, ecle, proximity of at most SCATTER_ROWS scored rows, a seeded uniform sample


@dataclass
class RunData:
    run_uri: str
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    target_counts: dict[str, int] | None = None
    pool: PoolSummary | None = None
    selections: dict[str, ReportedSelection] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] | None = None
    summary: dict[str, Any] | None = None
    diagnostics: dict[str, Any] | None = None  # score/diagnostics.json; None when the run has none

    def note_missing(self, what: str, uri: str, err: BaseException | None = None) -> None:
        msg = f"{what}: {uri}" + (f" ({type(err).__name__}: {err})" if err else " (not found)")
        self.missing.append(msg)
        log.info("report: missing %s", msg)


def _try_json(data: RunData, what: str, uri: str) -> Any:
    try:
        if not storage.exists(uri):
            data.note_missing(what, uri)
            return None
        return storage.read_json(uri)
    except Exception as e:  # a corrupt file must not cost the whole report
        data.note_missing(what, uri, e)
        return None


def _read_table(uri: str, wanted: list[str], required: list[str]) -> pa.Table:
    """Read ``wanted`` columns, dropping optional ones that the files lack."""
    try:
        return storage.read_parquet(uri, columns=wanted)
    except (KeyError, pa.ArrowInvalid):
        table = storage.read_parquet(uri)
        absent = [c for c in required if c not in table.column_names]
        if absent:
            raise KeyError(f"{uri} lacks column(s) {absent}") from None
        return table.select([c for c in wanted if c in table.column_names])


def _ok_rows(table: pa.Table) -> tuple[pa.Table, int]:
    if "error" not in table.column_names:
        return table, 0
    ok = pc.is_null(table.column("error"))
    good = table.filter(ok)
    return good.drop_columns(["error"]), table.num_rows - good.num_rows


def label_counts(column: pa.ChunkedArray) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in pc.value_counts(column).to_pylist():
        key = UNLABELED if row["values"] is None else str(row["values"])
        out[key] = out.get(key, 0) + int(row["counts"])
    return out


def _read_target(data: RunData) -> None:
    uri = RunLayout(data.run_uri).target_embeddings.root
    try:
        table, _ = _ok_rows(_read_table(uri, ["label", "error"], ["label"]))
        data.target_counts = label_counts(table.column("label"))
    except Exception as e:
        data.note_missing("target labels (embed/target Parquet)", uri, e)


_SAMPLE_SCHEMA = pa.schema([("label", pa.string()), ("ecle", pa.float32()), ("proximity", pa.float32())])


class _Sample:
    """A seeded uniform sample of at most ``k`` rows of a stream: the rows of the ``k`` smallest random keys."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.rng = k, np.random.default_rng(seed)
        self.rows = _SAMPLE_SCHEMA.empty_table()
        self.keys = np.zeros(0)

    def add(self, rows: pa.Table) -> None:
        keys = self.rng.random(rows.num_rows)
        table = pa.concat_tables([self.rows, rows.cast(_SAMPLE_SCHEMA)])
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.k:
            keep = np.sort(np.argpartition(keys, self.k - 1)[: self.k])
            table, keys = table.take(pa.array(keep)), keys[keep]
        self.rows, self.keys = table, keys


def _stream_pool(data: RunData, picked: set[str]) -> dict[str, tuple[str | None, float, float]]:
    """One pass over the pool's small columns: fills ``data.pool`` and returns the label, ECLE and proximity
    of each scored id in ``picked``."""
    from mak_ray.score import iter_score_columns, part_files

    uri = RunLayout(data.run_uri).scores.root
    found: dict[str, tuple[str | None, float, float]] = {}
    try:
        files = part_files(uri) if storage.exists(uri) else []
        if not files:
            raise FileNotFoundError(uri)
        fs, path = storage.filesystem(files[0])
        names = set(pq.read_schema(path, filesystem=fs).names)
        missing = [c for c in ("id", "ecle", "proximity") if c not in names]
        if missing:
            raise KeyError(f"{uri} lacks column(s) {missing}")
        cols = [c for c in ("id", "label", "ecle", "proximity", "error") if c in names]
        counts: dict[str, int] = {}
        scored = failed = labelled = 0
        sample = _Sample(SCATTER_ROWS, SAMPLE_SEED)
        wanted = pa.array(sorted(picked), pa.string())
        for batch in iter_score_columns(uri, cols):
            t = pa.Table.from_batches([batch])
            if "error" in cols:
                ok = pc.is_null(t.column("error"))
                failed += t.num_rows - int(pc.sum(ok.cast(pa.int64())).as_py() or 0)
                t = t.filter(ok)
            if "label" not in cols:
                t = t.append_column("label", pa.nulls(t.num_rows, pa.string()))
            scored += t.num_rows
            labelled += t.num_rows - t.column("label").null_count
            for k, v in label_counts(t.column("label")).items():
                counts[k] = counts.get(k, 0) + v
            sample.add(t.select(["label", "ecle", "proximity"]))
            if len(wanted):
                hit = t.filter(pc.is_in(t.column("id"), value_set=wanted))
                for i, lab, e, p in zip(
                    *(hit.column(c).to_pylist() for c in ("id", "label", "ecle", "proximity"))
                ):
                    found.setdefault(i, (lab, e, p))
        data.pool = PoolSummary(scored, failed, labelled, counts, sample.rows)
    except Exception as e:
        data.note_missing("pool scores (score/ Parquet)", uri, e)
    return found


def _read_selections(data: RunData) -> None:
    layout = RunLayout(data.run_uri)
    found = {m: layout.selection(m) for m in METHODS if storage.exists(layout.selection(m).parquet)}
    if not found:
        data.note_missing("selections (select/<method>/selection.parquet)", layout.stage_dir("select"))
        _stream_pool(data, set())
        return
    tables: dict[str, pa.Table] = {}
    for method, out in found.items():
        try:
            sel = storage.read_parquet(out.parquet)
            if "id" not in sel.column_names:
                raise KeyError("no 'id' column")
            tables[method] = sel.sort_by("order") if "order" in sel.column_names else sel
        except Exception as e:
            data.note_missing(f"selection of {method}", out.parquet, e)
    picked = {str(i) for t in tables.values() for i in t.column("id").to_pylist()}
    lookup = _stream_pool(data, picked)
    for method, sel in tables.items():
        out = found[method]
        try:
            ids = [str(v) for v in sel.column("id").to_pylist()]
            hit = [lookup.get(i) for i in ids]
            labels = [h[0] if h else None for h in hit]
            ecle = np.array([h[1] if h and h[1] is not None else np.nan for h in hit], dtype=np.float32)
            prox = np.array([h[2] if h and h[2] is not None else np.nan for h in hit], dtype=np.float32)
            for col, arr in (("ecle", ecle), ("proximity", prox)):  # fall back to the selection's own values
                if col in sel.column_names and np.isnan(arr).any():
                    own = sel.column(col).to_numpy(zero_copy_only=False).astype(np.float32)
                    arr[np.isnan(arr)] = own[np.isnan(arr)]
            summary = storage.read_json(out.summary) if storage.exists(out.summary) else {}
            data.selections[method] = ReportedSelection(method, ids, labels, ecle, prox, summary)
        except Exception as e:
            data.note_missing(f"selection of {method}", out.parquet, e)


def _read_metrics(data: RunData) -> None:
    layout = RunLayout(data.run_uri)
    models = [m for m in MODEL_ORDER if storage.exists(layout.metrics_json(m))]
    if not models:
        data.note_missing("evaluation (evaluate/<model>/metrics.json)", layout.stage_dir("evaluate"))
    for model in models:
        uri = layout.metrics_json(model)
        try:
            data.metrics[model] = storage.read_json(uri)
        except Exception as e:
            data.note_missing(f"metrics of {model}", uri, e)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if np.isfinite(v) else None


def accuracy_row(metrics: dict[str, Any], setting: str) -> dict[str, float | None]:
    """overall/many/medium/few/group_std/class_std of one setting; ``None`` for whatever is missing."""
    block: Any = None
    for key in SETTING_KEYS[setting]:
        if isinstance(metrics.get(key), dict):
            block = metrics[key]
            break
    if not isinstance(block, dict):
        return dict.fromkeys(ACC_COLUMNS)
    groups = block.get("groups") if isinstance(block.get("groups"), dict) else {}
    overall = next((block[k] for k in ("overall", "top1", "accuracy") if k in block), None)
    return {
        "overall": _num(overall),
        "many": _num(groups.get("many")),
        "medium": _num(groups.get("medium")),
        "few": _num(groups.get("few")),
        "group_std": _num(block.get("group_std")),
        "class_std": _num(block.get("class_std")),
    }


def tail_classes(data: RunData) -> tuple[list[str], str]:
    """(tail classes, the rule that chose them); see the module doc."""
    for model in ordered(list(data.metrics), MODEL_ORDER):
        groups = data.metrics[model].get("groups")
        assignment = groups.get("assignment") if isinstance(groups, dict) else None
        if isinstance(assignment, dict):
            few = sorted(str(c) for c, g in assignment.items() if g == "few")
            if few:
                return few, f"classes in the evaluation's 'few' group (evaluate/{model}/metrics.json)"
    counts = {c: n for c, n in (data.target_counts or {}).items() if c != UNLABELED and not is_ood(c)}
    if not counts:
        return [], "no target labels: tail undefined"
    ev = (data.config or {}).get("evaluate") or {}
    few_t = ev.get("few_threshold")
    if isinstance(few_t, (int, float)):
        few = sorted(c for c, n in counts.items() if n < few_t)
        if few:
            return few, f"classes with fewer than {few_t} target images (config evaluate.few_threshold)"
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return sorted(ranked[(len(ranked) + 1) // 2 :]), "lower half of the classes by target count"


def _read_diagnostics(data: RunData) -> None:
    """``score/diagnostics.json`` when the score stage wrote one (older runs have none: a note, not a gap)."""
    uri = RunLayout(data.run_uri).scores.file(DIAGNOSTICS)
    try:
        if not storage.exists(uri):
            return
        found = storage.read_json(uri)
        if not isinstance(found, dict):
            raise ValueError("not a JSON object")
        data.diagnostics = found
    except Exception as e:
        data.note_missing("score diagnostics", uri, e)


def collect(run_uri: str) -> RunData:
    """Read everything the report shows; never raises for missing or unreadable parts."""
    data = RunData(run_uri=run_uri)
    layout = RunLayout(run_uri)
    cfg_uri = layout.config
    try:
        if storage.exists(cfg_uri):
            data.config = yaml.safe_load(storage.read_text(cfg_uri)) or {}
        else:
            data.note_missing("config", cfg_uri)
    except Exception as e:
        data.note_missing("config", cfg_uri, e)
    _read_target(data)
    _read_selections(data)  # and the pool, in one streamed pass
    _read_metrics(data)
    _read_diagnostics(data)
    timings = _try_json(data, "stage timings", layout.timings)
    if isinstance(timings, dict):
        stages = timings.get("stages", timings)
        data.timings = {str(k): float(v) for k, v in stages.items() if _num(v) is not None}
    summary = _try_json(data, "run summary", layout.summary)
    data.summary = summary if isinstance(summary, dict) else None
    return data
