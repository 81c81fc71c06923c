"""The report's figures as PNG bytes, from the collected data and the computed numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from mak_ray.labels import is_ood, ood_mask
from mak_ray.report import plots
from mak_ray.report.collect import RunData
from mak_ray.report.numbers import SETTINGS


def _class_axis(numbers: dict[str, Any]) -> list[str]:
    """Classes by target count (largest first), then labels seen only in pool/selections, OOD last."""
    target = numbers.get("target_counts") or {}
    seen: set[str] = set(target)
    if numbers.get("pool"):
        seen |= set(numbers["pool"]["class_counts"])
    for s in numbers["selections"].values():
        seen |= set(s["class_counts"])
    head = sorted(target, key=lambda c: (-target[c], c))
    rest = sorted(c for c in seen if c not in target)
    return head + [c for c in rest if not is_ood(c)] + [c for c in rest if is_ood(c)]


def make_figures(data: RunData, numbers: dict[str, Any]) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    panels = []
    if numbers.get("target_counts"):
        panels.append(("target", numbers["target_counts"]))
    if numbers.get("pool"):
        panels.append(("pool", numbers["pool"]["class_counts"]))
    panels += [(f"selection: {m}", s["class_counts"]) for m, s in numbers["selections"].items()]
    if panels:
        figs["class_histograms.png"] = plots.class_histograms(panels, _class_axis(numbers), is_ood)
    sels = numbers["selections"]
    pool = numbers.get("pool") or {}
    ood = {m: s["ood_share"] for m, s in sels.items() if s["ood_share"] is not None}
    if ood:
        figs["ood_share.png"] = plots.share_bars(
            ood,
            "Share of out-of-distribution images per selection",
            "OOD share (%)",
            pool.get("ood_share"),
            "pool",
        )
    tail = {m: s["tail_share"] for m, s in sels.items() if s["tail_share"] is not None}
    if tail and numbers["tail"]["classes"]:
        figs["tail_share.png"] = plots.share_bars(
            tail, "Share of tail-class images per selection", "tail share (%)", pool.get("tail_share"), "pool"
        )
    if data.pool is not None and data.pool.sample.num_rows:
        sample = data.pool.sample  # a seeded sample of at most collect.SCATTER_ROWS scored rows
        prox = sample.column("proximity").to_numpy(zero_copy_only=False).astype(np.float32)
        ecle = sample.column("ecle").to_numpy(zero_copy_only=False).astype(np.float32)
        ood = ood_mask(sample.column("label"))
        picks = {}
        for m, sel in data.selections.items():
            ok = np.isfinite(sel.ecle) & np.isfinite(sel.proximity)
            picks[m] = (sel.proximity[ok], sel.ecle[ok])
        figs["ecle_vs_proximity.png"] = plots.ecle_scatter(prox, ecle, ood, picks)
    acc = numbers["accuracy"]
    if any(v is not None for rows in acc.values() for r in rows.values() for v in r.values()):
        figs["accuracy_groups.png"] = plots.accuracy_groups(acc, SETTINGS)
    if numbers.get("timings"):
        figs["stage_times.png"] = plots.stage_times(numbers["timings"])
    return figs
