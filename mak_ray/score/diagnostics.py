"""Label-free diagnostics of a score output: does this model separate anything?

The paper's score trusts two things: that proximity (distance to the target's centroids) pushes
out-of-distribution images away, and that ECLE (tailness) measures rarity within the distribution. A model
trained on a small target can fail both: its features may put near-OOD images inside the target's own
distances, and ECLE then rises for exactly those images. The diagnostics measure this without labels, by
comparing the pool with the target's own distributions (``embed/target/reference.json``):

- the pool's quantiles of ``proximity`` and ``nn_distance`` beside the target's, their spread ratio, and the
  share of the pool beyond the target's 99th percentile;
- the correlation of ECLE with proximity and with ``nn_distance`` (positive: ECLE partly measures distance);
- with pool labels (the demo: labels that start with ``ood`` mark OOD images), the OOD AUROC of proximity,
  ``nn_distance`` and ECLE, and the mean ECLE per label.

One Ray task per group of part files returns a mergeable :class:`Tally` (log-spaced histograms, moment sums,
per-label sums); the driver merges them and holds nothing that grows with the pool. Warnings go to the log and
into ``diagnostics.json``, which the report shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.labels import ood_mask
from mak_ray.layout import RunLayout

log = logging.getLogger(__name__)

COLUMNS = ("ecle", "proximity", "nn_distance")
# log-spaced bins: distances and losses concentrate near small values; relative resolution ~0.4 %
EDGES = {
    "ecle": np.geomspace(1e-4, 1e3, 4097),
    "proximity": np.geomspace(1e-7, 2.0, 4097),
    "nn_distance": np.geomspace(1e-7, 2.0, 4097),
}
MAX_LABELS = 1000  # per-label sums stop at this many labels (the rest are counted as one)

# warning thresholds (see docs/ARCHITECTURE.md, "Selection fidelity")
MIN_BEYOND_P99 = 0.05  # share of the pool beyond the target's 99th-percentile nearest-target distance
MIN_SPREAD_RATIO = 1.25  # pool's proximity spread (q95 - q05) over the target's
MAX_ECLE_DISTANCE_CORR = 0.3


def _hist(values: np.ndarray, col: str) -> np.ndarray:
    edges = EDGES[col]
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.int64)


@dataclass
class Tally:
    """Mergeable sums of one group of part files."""

    rows: int = 0
    usable: int = 0
    hist: dict[str, np.ndarray] = field(default_factory=dict)  # per column, usable rows
    ood_hist: dict[str, np.ndarray] = field(default_factory=dict)  # rows labelled OOD
    in_hist: dict[str, np.ndarray] = field(default_factory=dict)  # rows with a label, not OOD
    beyond: dict[str, int] = field(default_factory=dict)  # rows above the target's 99th percentile
    moments: np.ndarray = field(default_factory=lambda: np.zeros(9))  # n, Se, Sp, Sd, See, Spp, Sdd, Sep, Sed
    labels: dict[str, list[float]] = field(default_factory=dict)  # label -> [count, ecle sum]

    def add(self, table: pa.Table, p99: dict[str, float]) -> None:
        v = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in COLUMNS}
        finite = np.logical_and.reduce([np.isfinite(x) for x in v.values()])
        if not finite.all():  # a usable row has finite scores; anything else is left out of every figure
            table = table.filter(pa.array(finite))
            v = {c: x[finite] for c, x in v.items()}
        n = len(v["ecle"])
        labels = table.column("label") if "label" in table.column_names else pa.nulls(n, pa.string())
        known = pc.fill_null(pc.not_equal(labels, ""), False).to_numpy(zero_copy_only=False).astype(bool)
        ood = ood_mask(labels)
        self.usable += n
        for c in COLUMNS:
            _acc(self.hist, c, _hist(v[c], c))
            _acc(self.ood_hist, c, _hist(v[c][ood], c))
            _acc(self.in_hist, c, _hist(v[c][known & ~ood], c))
            if c in p99:
                self.beyond[c] = self.beyond.get(c, 0) + int(np.count_nonzero(v[c] > p99[c]))
        e, p, d = v["ecle"], v["proximity"], v["nn_distance"]
        self.moments += [len(e), e.sum(), p.sum(), d.sum(), e @ e, p @ p, d @ d, e @ p, e @ d]
        by_label = (
            pa.table({"label": labels, "ecle": e})
            .filter(pa.array(known))
            .group_by("label")
            .aggregate([("ecle", "count"), ("ecle", "sum")])
        )
        for name, count, total in zip(
            *(by_label.column(c).to_pylist() for c in ("label", "ecle_count", "ecle_sum"))
        ):
            key = name if (name in self.labels or len(self.labels) < MAX_LABELS) else "(other labels)"
            c = self.labels.setdefault(key, [0, 0.0])
            c[0] += int(count)
            c[1] += float(total)

    def merge(self, other: Tally) -> Tally:
        out = Tally(self.rows + other.rows, self.usable + other.usable, moments=self.moments + other.moments)
        for mine, theirs, dest in (
            (self.hist, other.hist, out.hist),
            (self.ood_hist, other.ood_hist, out.ood_hist),
            (self.in_hist, other.in_hist, out.in_hist),
        ):
            for c in set(mine) | set(theirs):
                dest[c] = mine.get(c, 0) + theirs.get(c, 0)
        for c in set(self.beyond) | set(other.beyond):
            out.beyond[c] = self.beyond.get(c, 0) + other.beyond.get(c, 0)
        out.labels = {k: list(v) for k, v in self.labels.items()}
        for k, (n, s) in other.labels.items():
            c = out.labels.setdefault(k, [0, 0.0])
            c[0] += n
            c[1] += s
        return out


def _acc(d: dict[str, np.ndarray], c: str, h: np.ndarray) -> None:
    d[c] = d[c] + h if c in d else h


def tally_files(files: list[str], p99: dict[str, float]) -> Tally:
    """One task: the tally of these part files' usable rows."""
    import pyarrow.parquet as pq

    out = Tally()
    for uri in files:
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=[*COLUMNS, "label", "error"])
        out.rows += table.num_rows
        good = table.filter(pc.is_null(table.column("error")))
        if good.num_rows:
            out.add(good, p99)
    return out


# ------------------------------------------------------------------------------------------- figures


def hist_quantile(counts: np.ndarray, col: str, q: float) -> float | None:
    """The ``q`` quantile of a histogram, interpolated in log space inside its bin."""
    total = int(counts.sum())
    if total == 0:
        return None
    edges = EDGES[col]
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * total, side="left"))
    i = min(i, len(counts) - 1)
    before = cum[i - 1] if i else 0
    frac = (q * total - before) / max(int(counts[i]), 1)
    lo, hi = np.log(edges[i]), np.log(edges[i + 1])
    return float(np.exp(lo + min(max(frac, 0.0), 1.0) * (hi - lo)))


def hist_auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(a positive's value > a negative's), ties within a bin counted half (Mann-Whitney on binned values)."""
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def _corr(m: np.ndarray, a: int, b: int, aa: int, bb: int, ab: int) -> float | None:
    n = m[0]
    if n < 2:
        return None
    cov = m[ab] / n - (m[a] / n) * (m[b] / n)
    va = m[aa] / n - (m[a] / n) ** 2
    vb = m[bb] / n - (m[b] / n) ** 2
    if va <= 1e-18 or vb <= 1e-18:
        return None
    return float(cov / np.sqrt(va * vb))


def summarise(t: Tally, reference: dict[str, Any]) -> dict[str, Any]:
    """The diagnostics' figures and warnings from a merged tally and the target's reference."""
    from mak_ray.mak import quantile_of

    def tq(col: str, qs: tuple[float, ...]) -> dict[str, float | None]:
        return {f"{q:g}": (quantile_of(reference[col], q) if col in reference else None) for q in qs}

    def pq_(col: str) -> dict[str, float | None]:
        return {f"{q:g}": hist_quantile(t.hist.get(col, np.zeros(1)), col, q) for q in (0.05, 0.5, 0.95)}

    out: dict[str, Any] = {
        "rows": t.rows,
        "usable": t.usable,
        "target": {
            "images": reference.get("images"),
            "nn_distance_q": tq("nn_distance", (0.5, 0.8, 0.9, 0.99)),
            "proximity_q": tq("proximity", (0.05, 0.5, 0.95, 0.99)),
        },
        "pool": {c + "_q": pq_(c) for c in COLUMNS},
    }
    out["beyond_target_p99"] = {c: (t.beyond[c] / t.usable if t.usable else None) for c in t.beyond}
    pool_p, tgt_p = out["pool"]["proximity_q"], out["target"]["proximity_q"]
    spread = None
    if None not in (pool_p["0.05"], pool_p["0.95"], tgt_p["0.05"], tgt_p["0.95"]):
        spread = (pool_p["0.95"] - pool_p["0.05"]) / max(tgt_p["0.95"] - tgt_p["0.05"], 1e-12)
    out["proximity_spread_ratio"] = spread
    out["corr_ecle_proximity"] = _corr(t.moments, 1, 2, 4, 5, 7)
    out["corr_ecle_nn_distance"] = _corr(t.moments, 1, 3, 4, 6, 8)
    auroc = {c: hist_auroc(t.ood_hist.get(c, np.zeros(1)), t.in_hist.get(c, np.zeros(1))) for c in COLUMNS}
    out["auroc"] = auroc if any(v is not None for v in auroc.values()) else None
    out["ecle_by_label"] = {
        k: {"mean_ecle": s / n if n else None, "count": int(n)} for k, (n, s) in sorted(t.labels.items())
    }
    out["warnings"] = warnings_of(out)
    return out


def warnings_of(d: dict[str, Any]) -> list[str]:
    """Plain-language warnings for a user whose selection the figures put in doubt."""
    out = []
    beyond = d["beyond_target_p99"].get("nn_distance")
    if beyond is not None and beyond < MIN_BEYOND_P99:
        out.append(
            f"Only {100 * beyond:.1f} % of the pool lies farther from the target than the target's own 99th "
            "percentile of nearest-neighbour distance. Either the pool holds almost no out-of-distribution "
            "images, or this model cannot tell them apart from the target; if your pool may hold junk, do not "
            "trust proximity to filter it (a stronger model, model.init_checkpoint, helps)."
        )
    spread = d["proximity_spread_ratio"]
    if spread is not None and spread < MIN_SPREAD_RATIO:
        out.append(
            f"The pool's proximity spreads only {spread:.2f}x as wide as the target's own: the model places the "
            "pool inside the target's distances, so the paper's proximity term separates little."
        )
    corr = d["corr_ecle_proximity"]
    if corr is not None and corr > MAX_ECLE_DISTANCE_CORR:
        out.append(
            f"ECLE rises with distance from the target (correlation {corr:.2f}): tailness partly measures how "
            "unlike the target an image is, so the paper's 'mak' score can favour out-of-distribution images. "
            "Prefer 'mak_gated', which ranks by ECLE only inside the target's nearest-neighbour gate."
        )
    return out


def diagnose(cfg: MakConfig, layout: RunLayout) -> dict[str, Any]:
    """Tally the score output in Ray tasks, write ``diagnostics.json`` and log its warnings."""
    import ray

    from mak_ray.mak import quantile_of
    from mak_ray.score import part_files
    from mak_ray.score.outputs import file_groups, merged

    reference = storage.read_json(layout.target_reference) if storage.exists(layout.target_reference) else {}
    p99 = {c: quantile_of(reference[c], 0.99) for c in ("proximity", "nn_distance") if c in reference}
    files = part_files(layout.scores.root)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(tally_files)
    tally = merged([task.remote(g, p99) for _, g in file_groups(files, cpus)], Tally.merge) or Tally()
    out = summarise(tally, reference)
    storage.write_json(layout.diagnostics, out)
    for w in out["warnings"]:
        log.warning("score diagnostics: %s", w)
    log.info(
        "score diagnostics: %s beyond the target's p99 nearest-neighbour distance, proximity spread ratio %s, "
        "corr(ECLE, proximity) %s",
        _fmt(out["beyond_target_p99"].get("nn_distance"), pct=True),
        _fmt(out["proximity_spread_ratio"]),
        _fmt(out["corr_ecle_proximity"]),
    )
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f} %" if pct else f"{x:.2f}"
