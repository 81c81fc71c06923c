"""Every number the report shows, computed from the collected run data (this is ``report_data.json``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mak_ray.registry import STAGES
from mak_ray.report.collect import (
    MODEL_ORDER,
    RunData,
    accuracy_row,
    is_ood,
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
)
SETTINGS = {"full": "Linear probe (full labelled train set)", "few_shot": "Few-shot linear probe"}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


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
    return out
