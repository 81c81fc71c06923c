"""Turn a run's outputs into ``{out}/report/index.html`` (self-contained: PNGs inlined as data URIs), the
same PNGs beside it, and ``report_data.json`` holding every number shown.

Missing parts (a run without evaluation, say) are listed at the top instead of failing the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
from collections import Counter
from typing import Any

import numpy as np

from mak_ray import storage
from mak_ray.report import plots
from mak_ray.report.collect import (
    ACC_COLUMNS,
    MODEL_ORDER,
    RunData,
    accuracy_row,
    collect,
    is_ood,
    label_counts,
    ordered,
    pool_ood_mask,
    tail_classes,
)

log = logging.getLogger(__name__)

NOT_IN_POOL = "(not in pool)"
SETTINGS = {"full": "Linear probe (full labelled train set)", "few_shot": "Few-shot linear probe"}
STAGE_ORDER = ("pretrain", "embed_target", "score", "select", "retrain", "evaluate", "report")


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
        counts = label_counts(data.pool.column("label"))  # vectorised: pools can hold millions of rows
        n = data.pool.num_rows
        labelled = n - data.pool.column("label").null_count
        n_ood = sum(c for k, c in counts.items() if is_ood(k))
        n_tail = sum(c for k, c in counts.items() if k in tail_set)
        out["pool"] = {
            "scored": n,
            "failed": data.pool_failed,
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
        }
    out["selections"] = sels
    out["accuracy"] = {
        model: {s: accuracy_row(data.metrics[model], s) for s in SETTINGS}
        for model in ordered(list(data.metrics), MODEL_ORDER)
    }
    if data.timings is not None:
        names = ordered(list(data.timings), STAGE_ORDER)
        out["timings"] = {k: data.timings[k] for k in names}
    else:
        out["timings"] = None
    out["summary"] = data.summary
    out["checks"] = demo_checks(out)
    return out


def demo_checks(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's expected outcomes, MAK against random, stated as they came out (true, false or unknown)."""
    sels, acc = numbers["selections"], numbers["accuracy"]
    if "mak" not in sels or "random" not in sels:
        return []

    def check(claim: str, mak: float | None, rnd: float | None, higher: bool) -> dict[str, Any]:
        holds = None if mak is None or rnd is None else (mak > rnd if higher else mak < rnd)
        return {"claim": claim, "mak": mak, "random": rnd, "holds": holds}

    checks = [
        check(
            "MAK picks a larger share of tail-class images than random",
            sels["mak"]["tail_share"],
            sels["random"]["tail_share"],
            True,
        ),
        check(
            "MAK picks a smaller share of OOD images than random",
            sels["mak"]["ood_share"],
            sels["random"]["ood_share"],
            False,
        ),
    ]
    for setting, name in (("full", "linear"), ("few_shot", "few-shot")):
        mak = acc.get("mak", {}).get(setting, {}).get("few")
        rnd = acc.get("random", {}).get(setting, {}).get("few")
        checks.append(
            check(
                f"few-group {name} accuracy after retraining is higher with MAK than with random",
                mak,
                rnd,
                True,
            )
        )
    return checks


# ------------------------------------------------------------------------------------------- figures


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
    if data.pool is not None and data.pool.num_rows:
        prox = data.pool.column("proximity").to_numpy(zero_copy_only=False).astype(np.float32)
        ecle = data.pool.column("ecle").to_numpy(zero_copy_only=False).astype(np.float32)
        ood_mask = pool_ood_mask(data.pool.column("label"))
        picks = {}
        for m, sel in data.selections.items():
            ok = np.isfinite(sel.ecle) & np.isfinite(sel.proximity)
            picks[m] = (sel.proximity[ok], sel.ecle[ok])
        figs["ecle_vs_proximity.png"] = plots.ecle_scatter(prox, ecle, ood_mask, picks)
    acc = numbers["accuracy"]
    if any(v is not None for rows in acc.values() for r in rows.values() for v in r.values()):
        figs["accuracy_groups.png"] = plots.accuracy_groups(acc, SETTINGS)
    if numbers.get("timings"):
        figs["stage_times.png"] = plots.stage_times(numbers["timings"])
    return figs


# ------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.missing{background:#fff4e5;border:1px solid #f0b429;padding:.6em 1em}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5;padding:0 .2em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100.0 * v:.{digits}f}%"


def _acc(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}"


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [
            f"<td>{_e(c)}</td>" if i < numeric_from else f'<td class="num">{_e(c)}</td>'
            for i, c in enumerate(row)
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return f'<p class="note">No figure: {_e(alt)} (data missing).</p>'
    b64 = base64.b64encode(figs[name]).decode("ascii")
    return f'<p><img src="data:image/png;base64,{b64}" alt="{_e(alt)}" title="{_e(name)}"></p>'


def render_html(numbers: dict[str, Any], figs: dict[str, bytes], generated: str) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mak-ray report: {_e(numbers['run_uri'])}</title><style>{CSS}</style></head><body>",
        "<h1>mak-ray run report</h1>",
        f"<p>Run: <code>{_e(numbers['run_uri'])}</code><br>Generated: {_e(generated)}</p>",
    ]
    if numbers["missing"]:
        items = "".join(f"<li>{_e(m)}</li>" for m in numbers["missing"])
        parts.append(
            f"<div class='missing'><b>Missing parts</b> (the report shows what exists):<ul>{items}</ul></div>"
        )

    if numbers.get("checks"):
        parts.append("<h2>Expected outcomes (MAK vs random)</h2>")
        verdict = {True: "yes", False: "NO", None: "unknown (data missing)"}
        rows = []
        for c in numbers["checks"]:
            fmt = _acc if "accuracy" in c["claim"] else _pct
            rows.append([c["claim"], fmt(c["mak"]), fmt(c["random"]), verdict[c["holds"]]])
        parts.append(_table(["claim", "mak", "random", "holds"], rows))

    parts.append("<h2>Selections</h2>")
    tail = numbers["tail"]
    parts.append(
        f"<p class='note'>OOD = pool label starting with <code>ood</code>. Tail classes "
        f"({_e(tail['rule'])}): {_e(', '.join(tail['classes']) or 'none')}. Shares are of the picks found in the "
        f"scored pool; labels are used only for this report, never for selection.</p>"
    )
    rows = []
    pool = numbers.get("pool")
    if pool:
        rows.append(
            [
                "pool (all scored)",
                str(pool["scored"]),
                "",
                str(pool["ood"]),
                _pct(pool["ood_share"]),
                str(pool["tail"]),
                _pct(pool["tail_share"]),
                "",
            ]
        )
    for m, s in numbers["selections"].items():
        rows.append(
            [
                m,
                str(s["picks"]),
                "n/a" if s["budget"] is None else str(s["budget"]),
                str(s["ood"]),
                _pct(s["ood_share"]),
                str(s["tail"]),
                _pct(s["tail_share"]),
                str(s["not_in_pool"]),
            ]
        )
    if rows:
        parts.append(
            _table(["set", "images", "budget", "OOD", "OOD share", "tail", "tail share", "not in pool"], rows)
        )
    else:
        parts.append("<p class='note'>No selections or pool scores found.</p>")
    parts.append(_img(figs, "ood_share.png", "OOD share per selection"))
    parts.append(_img(figs, "tail_share.png", "tail-class share per selection"))

    parts.append("<h2>Class histograms</h2>")
    parts.append(_img(figs, "class_histograms.png", "class histograms of target, pool and selections"))

    parts.append("<h2>ECLE vs proximity</h2>")
    parts.append(
        "<p class='note'>Each panel shows the scored pool (subsampled to at most 20,000 points) and one "
        "method's picks. MAK prefers high ECLE (hard for the model: tail-like) at high proximity (near "
        "the target set: not junk).</p>"
    )
    parts.append(_img(figs, "ecle_vs_proximity.png", "ECLE vs proximity with picks highlighted"))

    parts.append("<h2>Accuracy</h2>")
    acc = numbers["accuracy"]
    if acc:
        header = ["model"] + [f"{lab} {c}" for lab in ("linear", "few-shot") for c in ACC_COLUMNS]
        rows = []
        for model, settings in acc.items():
            label = "target_only (no additions)" if model == "target_only" else model
            rows.append([label] + [_acc(settings[s][c]) for s in SETTINGS for c in ACC_COLUMNS])
        parts.append(
            "<p class='note'>Top-1 accuracy in %; many/medium/few are means of per-class accuracy over "
            "the classes in each group (by target count); std columns in percentage points.</p>"
        )
        parts.append(_table(header, rows))
    else:
        parts.append("<p class='note'>No evaluation results (evaluate/&lt;model&gt;/metrics.json) found.</p>")
    parts.append(_img(figs, "accuracy_groups.png", "accuracy by class group"))

    parts.append("<h2>Time per stage</h2>")
    t = numbers.get("timings")
    if t:
        rows = [[k, f"{v:.1f}"] for k, v in t.items()] + [["total", f"{sum(t.values()):.1f}"]]
        parts.append(_table(["stage", "seconds"], rows))
    parts.append(_img(figs, "stage_times.png", "time per stage"))

    summary = numbers.get("summary")
    if summary:
        parts.append("<h2>Run accounting</h2>")
        rows = [[k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)] for k, v in summary.items()]
        parts.append(_table(["field", "value"], rows, numeric_from=2))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_uri: str, out_uri: str | None = None) -> str:
    """Write the report of the run at ``run_uri`` to ``out_uri`` (default ``{run}/report``); return index.html's URI."""
    out_uri = out_uri or storage.join(run_uri, "report")
    data = collect(run_uri)
    numbers = compute_numbers(data)
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
