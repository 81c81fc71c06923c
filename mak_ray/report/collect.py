"""Gather the numbers a report shows from a run's outputs (layout: docs/ARCHITECTURE.md), tolerating gaps.

Every reader returns ``None`` (and notes what is missing) instead of raising, so a run that stopped after
scoring still gets a report saying which parts are absent. Labels are read only here, for reporting.

Definitions used in the report:

- **OOD share** of a selection: picks whose pool label starts with ``ood`` / all picks.
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
import yaml

from mak_ray import storage
from mak_ray.layout import RunLayout
from mak_ray.registry import METHODS, TARGET_ONLY

log = logging.getLogger(__name__)

OOD_PREFIX = "ood"
UNLABELED = "(unlabeled)"
MODEL_ORDER = (TARGET_ONLY, *METHODS)
SETTING_KEYS = {"full": ("full", "linear"), "few_shot": ("few_shot", "fewshot", "few-shot")}
ACC_COLUMNS = ("overall", "many", "medium", "few", "group_std", "class_std")


def is_ood(label: str | None) -> bool:
    return label is not None and str(label).lower().startswith(OOD_PREFIX)


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
class RunData:
    run_uri: str
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    target_counts: dict[str, int] | None = None
    pool: pa.Table | None = None  # id, label, ecle, proximity of the scored (error-free) rows
    pool_failed: int = 0
    selections: dict[str, ReportedSelection] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] | None = None
    summary: dict[str, Any] | None = None

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


def pool_ood_mask(labels: pa.ChunkedArray) -> np.ndarray:
    """Boolean mask of OOD labels (case-insensitive ``ood`` prefix), computed in Arrow."""
    hit = pc.starts_with(pc.utf8_lower(labels), OOD_PREFIX)
    return hit.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


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


def _read_pool(data: RunData) -> None:
    uri = RunLayout(data.run_uri).scores.root
    try:
        cols = ["id", "label", "ecle", "proximity", "error"]
        table = _read_table(uri, cols, ["id", "ecle", "proximity"])
        table, data.pool_failed = _ok_rows(table)
        if "label" not in table.column_names:
            table = table.append_column("label", pa.nulls(table.num_rows, pa.string()))
        data.pool = table.select(["id", "label", "ecle", "proximity"]).cast(
            pa.schema(
                [
                    ("id", pa.string()),
                    ("label", pa.string()),
                    ("ecle", pa.float32()),
                    ("proximity", pa.float32()),
                ]
            )
        )
    except Exception as e:
        data.note_missing("pool scores (score/ Parquet)", uri, e)


def _read_selections(data: RunData) -> None:
    layout = RunLayout(data.run_uri)
    found = {m: layout.selection(m) for m in METHODS if storage.exists(layout.selection(m).parquet)}
    if not found:
        data.note_missing("selections (select/<method>/selection.parquet)", layout.stage_dir("select"))
        return
    pool_lookup = data.pool.select(["id", "label", "ecle", "proximity"]) if data.pool is not None else None
    for method, out in found.items():
        uri = out.parquet
        try:
            sel = storage.read_parquet(uri)
            if "id" not in sel.column_names:
                raise KeyError("no 'id' column")
            if "order" in sel.column_names:
                sel = sel.sort_by("order")
            ids = [str(v) for v in sel.column("id").to_pylist()]
            labels: list[str | None] = [None] * len(ids)
            ecle = np.full(len(ids), np.nan, dtype=np.float32)
            prox = np.full(len(ids), np.nan, dtype=np.float32)
            if pool_lookup is not None:
                picks = pa.table({"id": pa.array(ids, pa.string()), "_pos": pa.array(np.arange(len(ids)))})
                joined = picks.join(pool_lookup, keys="id", join_type="left outer").sort_by("_pos")
                if joined.num_rows != len(ids):  # duplicate pool ids: keep the first row of each
                    _, first = np.unique(
                        pool_lookup.column("id").to_numpy(zero_copy_only=False), return_index=True
                    )
                    joined = picks.join(pool_lookup.take(np.sort(first)), keys="id", join_type="left outer")
                    joined = joined.sort_by("_pos")
                labels = joined.column("label").to_pylist()
                ecle = joined.column("ecle").to_numpy(zero_copy_only=False).astype(np.float32)
                prox = joined.column("proximity").to_numpy(zero_copy_only=False).astype(np.float32)
            for col, arr in (("ecle", ecle), ("proximity", prox)):  # fall back to the selection's own values
                if col in sel.column_names and np.isnan(arr).any():
                    own = sel.column(col).to_numpy(zero_copy_only=False).astype(np.float32)
                    arr[np.isnan(arr)] = own[np.isnan(arr)]
            summary = storage.read_json(out.summary) if storage.exists(out.summary) else {}
            data.selections[method] = ReportedSelection(method, ids, labels, ecle, prox, summary)
        except Exception as e:
            data.note_missing(f"selection of {method}", uri, e)


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
    _read_pool(data)
    _read_selections(data)
    _read_metrics(data)
    timings = _try_json(data, "stage timings", layout.timings)
    if isinstance(timings, dict):
        stages = timings.get("stages", timings)
        data.timings = {str(k): float(v) for k, v in stages.items() if _num(v) is not None}
    summary = _try_json(data, "run summary", layout.summary)
    data.summary = summary if isinstance(summary, dict) else None
    return data
