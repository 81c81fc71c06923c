"""The run report: self-contained HTML with class histograms, OOD/tail shares, ECLE-vs-proximity, accuracy
and stage times. Entry point: :func:`build_report`."""

from mak_ray.report.build import build_report

__all__ = ["build_report"]
