"""Stage ``report``: the self-contained HTML report of the run."""

from __future__ import annotations

from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.report import build_report

    return {"report": build_report(layout.root)}
