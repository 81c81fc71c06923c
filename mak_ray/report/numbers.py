"""Every number the report shows, computed from the collected run data (this is ``report_data.json``).

Keys beside the selections' own: ``ood_kinds`` (the OOD labels seen, sorted), ``pool.ood_kinds`` and each
selection's ``ood_kinds`` (``{kind: {"count", "share"}}``, shares of the labelled pool and of the picks found
in the pool), and ``diagnostics`` (the score stage's ``diagnostics.json`` with non-finite numbers as null, plus
``ecle_by_class``: mean ECLE per label beside its target count, and ``ecle_size_spearman``; ``None`` when the
run has no diagnostics).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mak_ray.labels import is_ood
from mak_ray.registry import STAGES
from mak_ray.report.collect import (
    MODEL_ORDER,
    UNLABELED,
    RunData,
    accuracy_row,
    ordered,
    tail_classes,
)

NOT_IN_POOL = "(not in pool)"
SELECT_SUMMARY_KEYS = (
    "candidates",
    "seconds_stats",
    "seconds_candidates",
    "seconds_kcenter",
    "seconds_finish",
    "kcenter_device",
    "two_stage",
    "picks_beyond_target_p90",
    "warnings",
)
SETTINGS = {"full": "Linear probe (full labelled train set)", "few_shot": "Few-shot linear probe"}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _kind_shares(counts: dict[str, int], kinds: list[str], whole: int) -> dict[str, dict[str, Any]]:
    return {k: {"count": counts.get(k, 0), "share": _share(counts.get(k, 0), whole)} for k in kinds}


def _clean(v: Any) -> Any:
    """JSON-able copy: non-finite floats become ``None``, keys strings."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _num(v: Any) -> int | float | None:
    """``v`` when it is a finite number (ints stay ints), else ``None``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        return None
    return v


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation; ``None`` under three pairs or when one side is constant."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _quantiles(q: Any) -> dict[str, float | None]:
    """A quantile block ``{"0.5": value}`` kept to keys that are numbers, values numbers or ``None``."""
    out: dict[str, float | None] = {}
    for k, v in (q if isinstance(q, dict) else {}).items():
        try:
            float(k)
        except ValueError:
            continue
        out[str(k)] = _num(v)
    return out


def _numbers_block(block: Any, quantile_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dict of numbers (``None`` where not one); ``quantile_keys`` hold quantile blocks instead."""
    block = block if isinstance(block, dict) else {}
    return {str(k): _quantiles(v) if k in quantile_keys else _num(v) for k, v in block.items()}


def diagnostics_numbers(diag: dict[str, Any] | None, target_counts: dict[str, int] | None) -> dict | None:
    """The diagnostics as the report shows them: the file's numbers, the warnings as strings, and the mean
    ECLE per label beside the label's target count (target classes by count, then other labels, OOD last)."""
    if diag is None:
        return None
    out = _clean(diag)
    quantile_keys = ("nn_distance_q", "proximity_q", "ecle_q")
    out["target"] = _numbers_block(out.get("target"), quantile_keys)
    out["pool"] = _numbers_block(out.get("pool"), quantile_keys)
    out["beyond_target_p99"] = _numbers_block(out.get("beyond_target_p99"))
    out["auroc"] = _numbers_block(out["auroc"]) if isinstance(out.get("auroc"), dict) else None
    for key in ("proximity_spread_ratio", "corr_ecle_proximity", "corr_ecle_nn_distance"):
        out[key] = _num(out.get(key))
    warnings = out.get("warnings")
    if isinstance(warnings, str):
        warnings = [warnings]
    out["warnings"] = [str(w) for w in warnings] if isinstance(warnings, list) else []
    by_label = out.get("ecle_by_label") if isinstance(out.get("ecle_by_label"), dict) else {}
    target = {c: n for c, n in (target_counts or {}).items() if c != UNLABELED and not is_ood(c)}
    others = sorted(c for c in by_label if c not in target)
    labels = (
        sorted(target, key=lambda c: (-target[c], c))
        + [c for c in others if not is_ood(c)]
        + [c for c in others if is_ood(c)]
    )
    rows = []
    for c in labels:
        entry = by_label.get(c) if isinstance(by_label.get(c), dict) else {}
        rows.append(
            {
                "label": c,
                "ood": is_ood(c),
                "target_count": target.get(c),
                "pool_count": _num(entry.get("count")),
                "mean_ecle": _num(entry.get("mean_ecle")),
            }
        )
    out["ecle_by_class"] = rows
    sized = [
        (r["target_count"], r["mean_ecle"]) for r in rows if r["target_count"] and r["mean_ecle"] is not None
    ]
    out["ecle_size_spearman"] = spearman([a for a, _ in sized], [b for _, b in sized])
    return out


def compute_numbers(data: RunData) -> dict[str, Any]:
    """Every number the report shows, JSON-able (this is ``report_data.json``)."""
    tail, tail_rule = tail_classes(data)
    tail_set = set(tail)
    out: dict[str, Any] = {
        "run_uri": data.run_uri,
        "missing": list(data.missing),
        "target_counts": data.target_counts,
        "tail": {"classes": tail, "rule": tail_rule},
        "ood_rule": "label starts with 'ood'",
    }
    seen = set(data.pool.class_counts) if data.pool is not None else set()
    seen |= {str(v) for sel in data.selections.values() for v in sel.labels if v is not None}
    kinds = sorted(k for k in seen if is_ood(k))
    out["ood_kinds"] = kinds
    if data.pool is not None:
        counts = data.pool.class_counts  # streamed aggregates: the pool is never loaded
        n = data.pool.scored
        labelled = data.pool.labelled
        n_ood = sum(c for k, c in counts.items() if is_ood(k))
        n_tail = sum(c for k, c in counts.items() if k in tail_set)
        out["pool"] = {
            "scored": n,
            "failed": data.pool.failed,
            "scatter_sample": data.pool.sample.num_rows,
            "class_counts": dict(sorted(counts.items())),
            "ood": n_ood,
            "ood_share": _share(n_ood, labelled),
            "tail": n_tail,
            "tail_share": _share(n_tail, labelled),
            "ood_kinds": _kind_shares(counts, kinds, labelled),
        }
    else:
        out["pool"] = None
    sels: dict[str, Any] = {}
    for method, sel in data.selections.items():
        known = [v for v in sel.labels if v is not None]
        counts = Counter(NOT_IN_POOL if v is None else str(v) for v in sel.labels)
        n_ood = sum(1 for v in known if is_ood(v))
        n_tail = sum(1 for v in known if v in tail_set)
        sels[method] = {
            "picks": len(sel.ids),
            "budget": sel.summary.get("budget"),
            "not_in_pool": len(sel.labels) - len(known),
            "class_counts": dict(sorted(counts.items())),
            "ood": n_ood,
            "ood_share": _share(n_ood, len(known)),
            "tail": n_tail,
            "tail_share": _share(n_tail, len(known)),
            "ood_kinds": _kind_shares(counts, kinds, len(known)),
            "mean_ecle": float(np.nanmean(sel.ecle)) if np.isfinite(sel.ecle).any() else None,
            "mean_proximity": float(np.nanmean(sel.proximity)) if np.isfinite(sel.proximity).any() else None,
            "stage": {k: sel.summary.get(k) for k in SELECT_SUMMARY_KEYS if k in sel.summary},
        }
    out["selections"] = sels
    out["accuracy"] = {
        model: {s: accuracy_row(data.metrics[model], s) for s in SETTINGS}
        for model in ordered(list(data.metrics), MODEL_ORDER)
    }
    if data.timings is not None:
        names = ordered(list(data.timings), STAGES)
        out["timings"] = {k: data.timings[k] for k in names}
    else:
        out["timings"] = None
    out["summary"] = data.summary
    out["diagnostics"] = diagnostics_numbers(data.diagnostics, data.target_counts)
    return out
