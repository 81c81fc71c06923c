"""The report page: one self-contained HTML file (the figures inlined as data URIs)."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from mak_ray.report.collect import ACC_COLUMNS
from mak_ray.report.numbers import SETTINGS

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.missing{background:#fff4e5;border:1px solid #f0b429;padding:.6em 1em}.note{color:#555;font-size:.9em}
.warning{background:#fdecea;border:2px solid #d93025;padding:.6em 1em;margin:.8em 0}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5;padding:0 .2em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100.0 * v:.{digits}f}%"


def _secs(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


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


def _g(v: Any) -> str:
    """A diagnostic number: four significant digits (proximity can span only a few hundredths)."""
    return "n/a" if v is None else f"{v:.4g}"


def _warnings(diag: dict[str, Any] | None, where: str) -> str:
    """The diagnostics' warnings in a red box; ``where`` says where the details are."""
    if not diag or not diag.get("warnings"):
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in diag["warnings"])
    return f"<div class='warning'><b>Warning from the score diagnostics</b> ({where}):<ul>{items}</ul></div>"


def _quantile_rows(diag: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows (set, measure) by quantile; columns the union of the quantiles given, ascending."""
    blocks = [
        ("target", "proximity", (diag.get("target") or {}).get("proximity_q")),
        ("pool", "proximity", (diag.get("pool") or {}).get("proximity_q")),
        ("target", "nn_distance", (diag.get("target") or {}).get("nn_distance_q")),
        ("pool", "nn_distance", (diag.get("pool") or {}).get("nn_distance_q")),
        ("pool", "ECLE", (diag.get("pool") or {}).get("ecle_q")),
    ]
    blocks = [(a, b, q) for a, b, q in blocks if isinstance(q, dict) and q]
    keys = sorted({k for _, _, q in blocks for k in q}, key=lambda k: float(k))
    rows = [[who, what] + ["" if k not in q else _g(q[k]) for k in keys] for who, what, q in blocks]
    return [f"q{k}" for k in keys], rows


def _diagnostics_section(diag: dict[str, Any] | None) -> list[str]:
    parts = ["<h2 id='diagnostics'>Does the model separate the pool from the target?</h2>"]
    if diag is None:
        parts.append(
            "<p class='note'>No score diagnostics (<code>score/diagnostics.json</code>): the run was scored "
            "without them, or its score stage has not finished.</p>"
        )
        return parts
    parts.append(
        "<p class='note'>Label-free, from the score stage. <code>proximity</code> = 1 &minus; max cosine to a "
        "target centroid, <code>nn_distance</code> = 1 &minus; max cosine to any target image (both: larger is "
        "farther from the target). If the pool's distances sit inside the target's own, proximity cannot tell "
        f"junk from tail. Rows: {_e(diag.get('rows', 'n/a'))} scored pool rows; target: "
        f"{_e((diag.get('target') or {}).get('images', 'n/a'))} images.</p>"
    )
    parts.append(_warnings(diag, "score/diagnostics.json"))
    header, rows = _quantile_rows(diag)
    if rows:
        parts.append("<h3>Distance quantiles, pool against target</h3>")
        parts.append(_table(["set", "measure", *header], rows, numeric_from=2))
    beyond = diag.get("beyond_target_p99") or {}
    summary = [
        ["pool share beyond the target's 99th percentile of proximity", _pct(beyond.get("proximity"))],
        ["pool share beyond the target's 99th percentile of nn_distance", _pct(beyond.get("nn_distance"))],
        ["proximity spread ratio (pool against target)", _g(diag.get("proximity_spread_ratio"))],
        ["correlation of ECLE and proximity over the pool", _g(diag.get("corr_ecle_proximity"))],
        ["correlation of ECLE and nn_distance over the pool", _g(diag.get("corr_ecle_nn_distance"))],
    ]
    parts.append(_table(["measure", "value"], summary))
    auroc = diag.get("auroc")
    if isinstance(auroc, dict) and auroc:
        parts.append("<h3>OOD AUROC (from the pool's labels)</h3>")
        parts.append(
            "<p class='note'>How well each score ranks OOD above in-distribution pool images: 0.5 is chance, "
            "1 perfect. A high ECLE AUROC means ECLE prefers junk, which MAK's score rewards.</p>"
        )
        parts.append(_table(["score", "AUROC"], [[k, _g(v)] for k, v in auroc.items()]))
    classes = diag.get("ecle_by_class") or []
    if classes:
        parts.append("<h3>Mean ECLE per class against its size in the target</h3>")
        rho = diag.get("ecle_size_spearman")
        parts.append(
            "<p class='note'>MAK's premise: the rarer a class in the target, the higher its ECLE (a negative "
            f"rank correlation with the class size; here {_g(rho)}). OOD labels are listed after the "
            "classes.</p>"
        )
        rows = [
            [
                r["label"],
                "" if r["target_count"] is None else str(r["target_count"]),
                "" if r["pool_count"] is None else str(r["pool_count"]),
                _g(r["mean_ecle"]),
            ]
            for r in classes
        ]
        parts.append(_table(["label", "target images", "pool images", "mean ECLE"], rows))
    return parts


def _ood_kind_table(numbers: dict[str, Any]) -> list[str]:
    kinds = numbers.get("ood_kinds") or []
    if not kinds:
        return []
    rows = []
    pool = numbers.get("pool")
    sets = ([("pool (all scored)", pool)] if pool else []) + list(numbers["selections"].items())
    for name, s in sets:
        per = s.get("ood_kinds") or {}
        rows.append(
            [name] + [f"{_pct(per[k]['share'])} ({per[k]['count']})" if k in per else "" for k in kinds]
        )
    return [
        "<h3>OOD share per kind</h3>",
        "<p class='note'>Each OOD label is one kind: the share of each set's images in that kind (count in "
        "brackets), beside the pool's own share.</p>",
        _table(["set", *kinds], rows),
    ]


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
    parts.append(
        _warnings(numbers.get("diagnostics"), "score diagnostics; see <a href='#diagnostics'>below</a>")
    )
    picked = [
        str(w)
        for sel in numbers["selections"].values()
        for w in (sel.get("stage") or {}).get("warnings") or []
    ]
    if picked:
        items = "".join(f"<li>{_e(w)}</li>" for w in picked)
        parts.append(f"<div class='warning'><b>Warning from the selection</b>:<ul>{items}</ul></div>")

    if numbers.get("checks"):
        method = numbers["checks"][0]["method"]
        parts.append(f"<h2>Expected outcomes ({_e(method)} vs random)</h2>")
        verdict = {True: "yes", False: "NO", None: "unknown (data missing)"}
        rows = []
        for c in numbers["checks"]:
            fmt = _acc if "accuracy" in c["claim"] else _pct
            rows.append([c["claim"], fmt(c["value"]), fmt(c["random"]), verdict[c["holds"]]])
        parts.append(_table(["claim", method, "random", "holds"], rows))

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
    parts += _ood_kind_table(numbers)
    parts.append(_img(figs, "ood_share.png", "OOD share per selection"))
    parts.append(_img(figs, "tail_share.png", "tail-class share per selection"))
    stage_rows = []
    for m, s in numbers["selections"].items():
        st = s.get("stage") or {}
        if not st:
            continue
        union = (st.get("two_stage") or {}).get("union_size")
        stage_rows.append(
            [m]
            + ["" if st.get(c) is None else str(st[c]) for c in ("candidates",)]
            + ["" if union is None else str(union)]
            + [
                _secs(st.get(c))
                for c in ("seconds_stats", "seconds_candidates", "seconds_kcenter", "seconds_finish")
            ]
            + [str(st.get("kcenter_device") or "")]
        )
    if stage_rows:
        parts.append("<h3>Select stage</h3>")
        parts.append(
            "<p class='note'>Seconds per phase: pool statistics and the candidate passes are shared by all "
            "methods; finish is the method's own task (reading its candidates, K-center, writing).</p>"
        )
        header = [
            "method",
            "candidates",
            "two-stage union",
            "stats s",
            "candidates s",
            "K-center s",
            "finish s",
            "K-center on",
        ]
        parts.append(_table(header, stage_rows))

    parts += _diagnostics_section(numbers.get("diagnostics"))

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
