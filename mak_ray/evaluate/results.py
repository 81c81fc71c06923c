"""Run the linear-probe evaluation (full-shot and few-shot) on embedding tables and write the results.

Input tables come from the scoring stage's embedding path: ``id`` (string), ``label`` (class name),
``embedding`` (fixed-size list of float16/float32) and ``error`` (null when the row is fine). Rows with an
error are dropped and counted. Results are a JSON-able dict; :func:`write_results` stores it as
``metrics.json`` plus a Markdown table, and :func:`markdown_table` renders the same columns for any set of
runs, so the report stage can compare methods side by side.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.config import EvalSection
from mak_ray.evaluate.fewshot import few_shot_subset
from mak_ray.evaluate.groups import GROUPS, class_groups
from mak_ray.evaluate.linear import fit_linear, predict
from mak_ray.evaluate.metrics import compute_metrics

log = logging.getLogger(__name__)

SETTINGS = ("full", "few_shot")


@dataclasses.dataclass
class Features:
    ids: np.ndarray  # str
    labels: np.ndarray  # str
    x: np.ndarray  # float32 (n, dim)
    dropped_errors: int


def features_from_table(table: pa.Table) -> Features:
    """Drop rows with a non-null ``error``; return ids, labels and a float32 feature matrix."""
    for col in ("id", "label", "embedding"):
        if col not in table.column_names:
            raise ValueError(f"embedding table lacks column {col!r} (has {table.column_names})")
    dropped = 0
    if "error" in table.column_names:
        ok = pc.is_null(table.column("error"))
        dropped = table.num_rows - int(pc.sum(ok).as_py() or 0)
        table = table.filter(ok)
    emb = table.column("embedding").combine_chunks()
    if emb.null_count:
        raise ValueError(f"{emb.null_count} rows have a null embedding but no error")
    if table.column("label").null_count:
        raise ValueError(f"{table.column('label').null_count} rows have a null label")
    n = table.num_rows
    if pa.types.is_fixed_size_list(emb.type):
        dim = emb.type.list_size
    elif n:
        lengths = pc.list_value_length(emb).to_numpy()
        if (lengths != lengths[0]).any():
            raise ValueError("embeddings have different lengths")
        dim = int(lengths[0])
    else:
        dim = 0
    values = emb.flatten().to_numpy(zero_copy_only=False)
    x = np.asarray(values, dtype=np.float32).reshape(n, dim)
    if not x.flags.writeable:  # zero-copy Arrow buffers are read-only; torch wants writable arrays
        x = x.copy()
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    labels = np.asarray([str(v) for v in table.column("label").to_pylist()], dtype=object)
    return Features(ids=ids, labels=labels, x=x, dropped_errors=dropped)


def _run_setting(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
    groups: Mapping[str, str],
    cfg: EvalSection,
    seed: int,
) -> dict[str, Any]:
    model = fit_linear(train_x, train_y, len(classes), cfg, seed)
    pred = np.asarray(classes, dtype=object)[predict(model, test_x)]
    out = compute_metrics(test_labels, pred, groups)
    out["n_train"] = int(len(train_y))
    return out


def evaluate_features(
    train: pa.Table, test: pa.Table, target_counts: Mapping[str, int], cfg: EvalSection, seed: int
) -> dict[str, Any]:
    """Full-shot and few-shot linear probes on frozen features, with many/medium/few metrics.

    Classes are the sorted train labels. A test class that the train set lacks can never be predicted and
    so scores 0. A test class missing from ``target_counts`` counts as 0 target examples (group "few") and
    is listed under ``groups.missing_from_target``.
    """
    tr, te = features_from_table(train), features_from_table(test)
    if len(tr.labels) == 0 or len(te.labels) == 0:
        raise ValueError(f"empty evaluation set: {len(tr.labels)} train rows, {len(te.labels)} test rows")
    if tr.x.shape[1] != te.x.shape[1]:
        raise ValueError(f"train dim {tr.x.shape[1]} != test dim {te.x.shape[1]}")
    classes = sorted(set(tr.labels.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    train_y = np.asarray([index[c] for c in tr.labels], dtype=np.int64)
    unseen = sorted(set(te.labels.tolist()) - set(classes))
    if unseen:
        log.warning("%d test classes are absent from the train set and score 0: %s", len(unseen), unseen[:10])

    eval_classes = sorted(set(classes) | set(te.labels.tolist()))
    missing = [c for c in eval_classes if c not in target_counts]
    if missing:
        log.warning(
            "%d evaluation classes are absent from the target counts; counted as 0: %s",
            len(missing),
            missing[:10],
        )
    counts = {c: int(target_counts.get(c, 0)) for c in eval_classes}
    groups = class_groups(counts, cfg.many_threshold, cfg.few_threshold)

    log.info("full-shot probe: %d train, %d test, %d classes", len(train_y), len(te.labels), len(classes))
    full = _run_setting(tr.x, train_y, te.x, te.labels, classes, groups, cfg, seed)
    few_idx = few_shot_subset(train_y, cfg.few_shot, seed)
    log.info("few-shot probe (amount %g): %d train examples", cfg.few_shot, len(few_idx))
    few = _run_setting(tr.x[few_idx], train_y[few_idx], te.x, te.labels, classes, groups, cfg, seed)

    return {
        "full": full,
        "few_shot": few,
        "n_train": int(len(train_y)),
        "n_test": int(len(te.labels)),
        "n_few_shot": int(len(few_idx)),
        "n_classes": len(classes),
        "dim": int(tr.x.shape[1]),
        "dropped_errors": {
            "train": tr.dropped_errors,
            "test": te.dropped_errors,
            "total": tr.dropped_errors + te.dropped_errors,
        },
        "unseen_test_classes": unseen,
        "groups": {
            "many_threshold": cfg.many_threshold,
            "few_threshold": cfg.few_threshold,
            "assignment": dict(groups),
            "target_counts": counts,
            "n_classes": {g: sum(1 for v in groups.values() if v == g) for g in GROUPS},
            "missing_from_target": missing,
        },
        "seed": int(seed),
        "config": dataclasses.asdict(cfg),
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:.2f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per setting/method: ``{row name: metrics dict from compute_metrics}``; values in percent."""
    lines = [
        "| setting | overall | many | medium | few | group std | class std |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        g = m.get("groups", {})
        cells = [
            str(name).replace("|", "\\|"),
            _pct(m.get("top1")),
            _pct(g.get("many")),
            _pct(g.get("medium")),
            _pct(g.get("few")),
            _pct(m.get("group_std")),
            _pct(m.get("class_std")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping[str, Any], json_uri: str, md_uri: str, name: str) -> None:
    """Write the results plus ``name`` as JSON to ``json_uri`` and as a Markdown table to ``md_uri``."""
    payload = {"name": name, **results}
    storage.write_json(json_uri, payload)
    g = results.get("groups", {})
    md = [
        f"# Linear-probe evaluation: {name}",
        "",
        f"Top-1 accuracy (%). Train {results.get('n_train')}, few-shot {results.get('n_few_shot')}, "
        f"test {results.get('n_test')}; rows dropped for errors: "
        f"{(results.get('dropped_errors') or {}).get('total', 0)}. "
        f"Groups by target-set class count: many > {g.get('many_threshold')}, "
        f"few < {g.get('few_threshold')}; group means are means of per-class accuracy.",
        "",
        markdown_table({s: results[s] for s in SETTINGS if s in results}),
    ]
    storage.write_text(md_uri, "\n".join(md))
    log.info("wrote evaluation results to %s", json_uri)
