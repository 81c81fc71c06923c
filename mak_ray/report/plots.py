"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global state) and returned as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_SCATTER_POINTS = 20_000
COLORS = {
    "mak": "#d62728",
    "mak_gated": "#8b0000",
    "random": "#1f77b4",
    "tailness": "#2ca02c",
    "proximity": "#9467bd",
    "kcenter": "#ff7f0e",
}
OOD_COLOR = "#7f7f7f"
CLASS_COLOR = "#4c72b0"


def method_color(name: str, i: int = 0) -> str:
    fallback = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")
    return COLORS.get(name, fallback[i % len(fallback)])


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def class_histograms(panels: list[tuple[str, dict[str, int]]], classes: list[str], is_ood) -> bytes:
    """One bar panel per set (target, pool, each selection), all on the same class axis; OOD bars grey."""
    fig = Figure(figsize=(max(8.0, 0.45 * len(classes) + 2), 1.9 * len(panels) + 0.8))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(classes))
    colors = [OOD_COLOR if is_ood(c) else CLASS_COLOR for c in classes]
    for ax, (title, counts) in zip(axes, panels, strict=True):
        values = [counts.get(c, 0) for c in classes]
        ax.bar(x, values, color=colors)
        ax.set_title(f"{title} (n={sum(counts.values())})", fontsize=10, loc="left")
        ax.set_ylabel("images")
        for xi, v in zip(x, values, strict=True):
            if v:
                ax.text(xi, v, str(v), ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.18)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    fig.suptitle("Class histograms (classes ordered by target count; OOD labels in grey)", fontsize=11)
    return _png(fig)


def share_bars(
    values: dict[str, float],
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "",
) -> bytes:
    """One bar per method with its share in percent; an optional dashed reference line (e.g. the pool's)."""
    fig = Figure(figsize=(max(4.5, 1.1 * len(values) + 2), 3.4))
    ax = fig.subplots()
    names = list(values)
    pct = [100.0 * values[n] for n in names]
    ax.bar(names, pct, color=[method_color(n, i) for i, n in enumerate(names)])
    for i, v in enumerate(pct):
        ax.text(i, v, f"{v:.1f}%", ha="center", va="bottom", fontsize=9)
    if reference is not None:
        ax.axhline(100.0 * reference, color="black", linestyle="--", linewidth=1, label=reference_label)
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.set_ylim(0, max([*pct, 100.0 * (reference or 0), 1.0]) * 1.2)
    return _png(fig)


def ecle_scatter(
    pool_prox: np.ndarray,
    pool_ecle: np.ndarray,
    pool_ood: np.ndarray,
    picks: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
) -> bytes:
    """ECLE (y) against proximity (x): the pool subsampled to 20k points, one panel per method's picks."""
    rng = np.random.default_rng(seed)
    n = len(pool_ecle)
    idx = rng.choice(n, size=MAX_SCATTER_POINTS, replace=False) if n > MAX_SCATTER_POINTS else np.arange(n)
    methods = list(picks) or ["pool"]
    cols = min(3, len(methods))
    rows = int(np.ceil(len(methods) / cols))
    fig = Figure(figsize=(4.6 * cols, 4.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    for i, (ax, method) in enumerate(zip(axes, methods, strict=False)):
        ind = idx[~pool_ood[idx]]
        ood = idx[pool_ood[idx]]
        ax.scatter(pool_prox[ind], pool_ecle[ind], s=3, c="#c7c7c7", alpha=0.5, linewidths=0, label="pool")
        if len(ood):
            ax.scatter(
                pool_prox[ood], pool_ecle[ood], s=3, c="#8fb3d9", alpha=0.6, linewidths=0, label="pool (OOD)"
            )
        if method in picks:
            px, py = picks[method]
            if len(px) > MAX_SCATTER_POINTS:
                keep = rng.choice(len(px), size=MAX_SCATTER_POINTS, replace=False)
                px, py = px[keep], py[keep]
            ax.scatter(
                px, py, s=9, c=method_color(method, i), alpha=0.85, linewidths=0, label=f"{method} picks"
            )
        ax.set_title(method, fontsize=10)
        ax.legend(fontsize=7, markerscale=2, loc="best")
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("ECLE (empirical contrastive loss expectation)")
    for ax in axes[-cols:]:
        ax.set_xlabel("proximity to the target set")
    shown = f"{len(idx)} of {n}" if n > len(idx) else f"all {n}"
    fig.suptitle(f"ECLE vs proximity ({shown} pool points)", fontsize=11)
    return _png(fig)


def accuracy_groups(rows: dict[str, dict[str, dict[str, float | None]]], settings: dict[str, str]) -> bytes:
    """Grouped bars of many/medium/few accuracy per model, one panel per setting (linear, few-shot)."""
    groups = ("overall", "many", "medium", "few")
    fig = Figure(figsize=(max(7.0, 1.6 * len(rows) + 3), 3.6 * len(settings)))
    axes = fig.subplots(len(settings), 1, squeeze=False)[:, 0]
    models = list(rows)
    width = 0.8 / max(1, len(models))
    for ax, (setting, title) in zip(axes, settings.items(), strict=True):
        x = np.arange(len(groups))
        for i, model in enumerate(models):
            vals = [rows[model].get(setting, {}).get(g) for g in groups]
            heights = [100.0 * v if v is not None else 0.0 for v in vals]
            ax.bar(
                x + (i - (len(models) - 1) / 2) * width,
                heights,
                width,
                label=model,
                color=method_color(model, i) if model != "target_only" else "#555555",
            )
        ax.set_xticks(x)
        ax.set_xticklabels(groups)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8, ncol=min(len(models), 6), loc="upper right")
    return _png(fig)


def stage_times(timings: dict[str, float]) -> bytes:
    fig = Figure(figsize=(7.0, 0.45 * len(timings) + 1.2))
    ax = fig.subplots()
    names = list(timings)
    vals = [timings[n] for n in names]
    y = np.arange(len(names))
    ax.barh(y, vals, color="#4c72b0")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    for yi, v in zip(y, vals, strict=True):
        ax.text(v, yi, f" {v:.1f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max([*vals, 1.0]) * 1.25)
    ax.set_title(f"Time per stage (total {sum(vals):.1f} s)", fontsize=11)
    return _png(fig)
