"""Turn a run's outputs into ``report/index.html`` (self-contained: PNGs inlined as data URIs), the same PNGs
beside it, and ``report_data.json`` holding every number shown.

Missing parts (a run without evaluation, say) are listed at the top instead of failing the report.
"""

from __future__ import annotations

import datetime as dt
import logging

from mak_ray import storage
from mak_ray.demo.checks import demo_checks
from mak_ray.layout import RunLayout
from mak_ray.report.collect import collect
from mak_ray.report.figures import make_figures
from mak_ray.report.numbers import compute_numbers
from mak_ray.report.page import render_html

log = logging.getLogger(__name__)


def build_report(run_uri: str, out_uri: str | None = None) -> str:
    """Write the report of the run at ``run_uri`` to ``out_uri`` (default: the run's report folder); return the
    URI of index.html."""
    out_uri = out_uri or RunLayout(run_uri).report_dir
    data = collect(run_uri)
    numbers = compute_numbers(data)
    numbers["checks"] = demo_checks(numbers)
    figs = make_figures(data, numbers)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    numbers["generated"] = generated
    numbers["images"] = sorted(figs)
    for name, png in figs.items():
        storage.write_bytes(storage.join(out_uri, name), png)
    storage.write_json(storage.join(out_uri, "report_data.json"), numbers)
    index = storage.join(out_uri, "index.html")
    storage.write_text(index, render_html(numbers, figs, generated))
    log.info("report: %d figures, %d missing parts -> %s", len(figs), len(numbers["missing"]), index)
    return index
