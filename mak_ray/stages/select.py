"""Stage ``select``: every configured method's selection from the score output, as Ray tasks over its files.

The driver only merges small results; the pool's rows stay in the tasks:

1. stats: one pass over ``ecle``/``proximity`` gives the pool-wide z-statistics and ranges, shared by every
   method, and a uniform sample of the rows' key columns of about ``cut.SAMPLE_ROWS`` rows
   (:func:`mak_ray.select.passes.stats_pass`);
2. candidates: from the sample, each method gets a key bound that at least its top ``n`` rows pass
   (:func:`mak_ray.select.cut.sampled_bound`), and one pass writes every method's rows at or above its bound,
   with their embeddings for the methods that run K-center. A method whose bound let through fewer than ``n``
   rows, or whose sample gave no bound, finds its cut with histogram passes instead (:mod:`mak_ray.select.cut`;
   usually one pass), and then a candidates pass that returns the few rows on the boundary, from which the driver
   makes the exact cut (ties go to the lower position in the output's file order);
3. finish: per method, one task finds the exact cut among the candidates (sampled bounds), reads them, runs
   K-center (on a GPU when the cluster has one and ``select.kcenter_device`` allows it) or takes the top ``K``,
   and writes the selection (:mod:`mak_ray.select.finish`).

Each method's ``summary.json`` gives the seconds of each phase, the candidate count, how the candidates were
bounded (``candidate_bound``: ``sample``, ``histogram`` or ``all``) and how many rows were written.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np

from mak_ray import storage
from mak_ray.config import ConfigError, MakConfig
from mak_ray.layout import RunLayout, done, mark_done, read_done
from mak_ray.mak import mak_score, quantile_of
from mak_ray.registry import DIVERSE_METHODS
from mak_ray.score import part_files
from mak_ray.score.outputs import file_groups, merged
from mak_ray.select import candidate_count
from mak_ray.select import cut as cuts
from mak_ray.select.finish import FinishSpec, finish
from mak_ray.select.passes import (
    CandidatePlan,
    KeySpec,
    PoolStats,
    boundary_rows_of_file,
    candidates_pass,
    histogram_pass,
    key_columns,
    stats_pass,
)

log = logging.getLogger(__name__)

FAR_QUANTILE = 0.9  # picks beyond this quantile of the target's own nearest-neighbour distance count as far
FAR_PICKS = 1 / 3  # a selection with more far picks than this gets a warning


def _key_range(method: str, pool: PoolStats, loss_weight: float) -> tuple[float, float]:
    (e_lo, e_hi), (p_lo, p_hi) = pool.ecle_range, pool.proximity_range
    if method == "mak":
        low, high = mak_score([e_lo, e_hi], [p_hi, p_lo], loss_weight, pool.stats)
        return float(low), float(high)
    if method == "mak_gated":  # gated rows keep their ECLE (>= 0); the rest are -1 - nn_distance
        return min(-1.0 - pool.nn_range[1], e_lo), e_hi
    if method == "tailness":
        return e_lo, e_hi
    if method == "proximity":
        return -p_hi, -p_lo
    if method == "random":
        return 0.0, 1.0
    return 0.0, 0.0  # kcenter: every key is 0


def _find_cuts(
    groups: list[tuple[int, list[str]]], specs: dict[str, KeySpec], intervals: dict[str, cuts.Interval]
) -> dict[str, cuts.Interval]:
    """Histogram passes (all unsettled methods in one read) until every interval is settled."""
    import ray

    task = ray.remote(histogram_pass)
    rounds = 0
    while True:
        todo = [m for m, iv in intervals.items() if not iv.settled]
        if not todo:
            return intervals
        rounds += 1
        edges = [intervals[m].edges() for m in todo]
        specs_todo = [specs[m] for m in todo]
        refs = [task.remote(files, specs_todo, edges) for _, files in groups]
        hists = merged(refs, lambda a, b: [x.merge(y) for x, y in zip(a, b)])
        for m, h, e in zip(todo, hists, edges):
            intervals[m] = intervals[m].narrow(h, e)
        log.info("select: histogram round %d for %s", rounds, ", ".join(todo))


def _first_intervals(pool: PoolStats, n_cand: dict[str, int], loss_weight: float) -> dict[str, cuts.Interval]:
    """Each method's whole key range, where the histogram passes start."""
    out = {}
    for m, n in n_cand.items():
        if n >= pool.usable:  # every usable row is a candidate
            out[m] = cuts.Interval(-np.inf, -np.inf, pool.usable, n)
        else:
            out[m] = cuts.first_interval(*_key_range(m, pool, loss_weight), n)
    return out


def _sampled_bounds(
    pool: PoolStats, specs: dict[str, KeySpec], n_cand: dict[str, int]
) -> dict[str, float | None]:
    """Each method's candidate bound from the stats pass's sample; None: find the cut with histogram passes
    (every row is a candidate, or the sample gives no useful bound)."""
    sample = pool.sample
    return {
        m: None
        if n_cand[m] >= pool.usable or sample is None or not sample.num_rows
        else cuts.sampled_bound(spec.keys(sample), pool.rate, n_cand[m])
        for m, spec in specs.items()
    }


def _candidates(
    groups: list[tuple[int, list[str]]],
    files: list[str],
    specs: dict[str, KeySpec],
    out: dict[str, list[str]],
    intervals: dict[str, cuts.Interval],
    bounds: dict[str, float | None],
    *,
    with_nn: bool,
) -> tuple[dict[str, cuts.Cut | None], dict[str, int]]:
    """One candidates pass for the methods of ``bounds``: each writes the rows at or above its sampled bound, or
    (bound None) the rows at or above the cut that histogram passes narrow down from ``intervals``. Returns each
    method's cut (None for a sampled bound: the finish task finds it among the candidates) and how many rows it
    wrote."""
    import ray

    hist = _find_cuts(groups, specs, {m: intervals[m] for m, b in bounds.items() if b is None})
    methods = list(bounds)
    plans = {
        m: [
            CandidatePlan(
                specs[m],
                bounds[m] if bounds[m] is not None else hist[m].lo,
                bounds[m] if bounds[m] is not None else hist[m].hi,
                uri,
                with_embedding=m in DIVERSE_METHODS,
                boundary_counts_only=bounds[m] is None and hist[m].equal_keys,
                with_nn=with_nn,
            )
            for uri in out[m]
        ]
        for m in methods
    }
    task = ray.remote(candidates_pass)
    refs = [
        task.remote(g_files, first, [plans[m][g] for m in methods])
        for g, (first, g_files) in enumerate(groups)
    ]
    boundaries: dict[str, list] = {m: [] for m in methods}
    for ref in refs:  # small: at most BOUNDARY_ROWS rows per method in all
        for m, b in zip(methods, ray.get(ref)):
            boundaries[m].append(b)
    written = {m: sum(b.written for b in boundaries[m]) for m in methods}
    cut = {
        m: None if bounds[m] is not None else _cut(hist[m], boundaries[m], specs[m], files) for m in methods
    }
    return cut, written


def _sample_rate(files: list[str]) -> float:
    """The probability of drawing a row into the stats pass's sample, for about ``SAMPLE_ROWS`` rows (or fewer:
    the pool's size is estimated from its largest of the first, middle and last part file)."""
    import pyarrow.parquet as pq

    from mak_ray import storage

    if not files:
        return 0.0
    largest = 0
    for uri in {files[0], files[len(files) // 2], files[-1]}:
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            largest = max(largest, pq.ParquetFile(f).metadata.num_rows)
    return min(1.0, cuts.SAMPLE_ROWS / max(1, len(files) * largest))


def _cut(interval: cuts.Interval, boundaries: list, spec: KeySpec, files: list[str]) -> cuts.Cut:
    """The exact cut from the boundary rows; for a boundary of equal keys, one more small task finds the row
    in the file where the count runs out."""
    if not (interval.equal_keys and interval.need > 0):
        return cuts.cut_from_rows(interval, boundaries)
    import ray

    file_index, rank = cuts.cut_file_from_counts(interval, boundaries)
    task = ray.remote(boundary_rows_of_file)
    rows = ray.get(task.remote(files[file_index], spec, interval.lo, interval.hi))
    return cuts.Cut(min_key=interval.lo, key=interval.key, file=file_index, row=int(rows[rank - 1]))


def kcenter_device(cfg: MakConfig) -> str:
    """``select.kcenter_device`` resolved against the cluster: ``cuda`` needs a GPU in it."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    want = cfg.select.kcenter_device
    if want == "cuda" and gpus < 1:
        raise ConfigError("select.kcenter_device", "is 'cuda', but the Ray cluster has no GPU")
    if want == "auto":
        return "cuda" if gpus >= 1 else "cpu"
    return want


def _check_kcenter_memory(cfg: MakConfig, method: str, n: int, dim: int) -> None:
    """The ``kcenter`` baseline holds every usable row's embedding in one task: refuse before it cannot."""
    limit = cfg.select.kcenter_max_bytes or _node_memory() // 4
    need = n * max(dim, 1) * 4 * 2  # float32 candidates plus the traversal's working copy
    if method == "kcenter" and need > limit:
        raise ConfigError(
            "select.kcenter_shards",
            f"the kcenter baseline would hold {n} embeddings ({need / 2**30:.1f} GiB) in one task, over "
            f"the bound of {limit / 2**30:.1f} GiB (select.kcenter_max_bytes); run it sharded "
            "(select.kcenter_shards > 1) or leave it out of select.methods",
        )


def _node_memory() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _embedding_dim(files: list[str]) -> int:
    import pyarrow.parquet as pq

    from mak_ray import storage

    for uri in files[:1]:
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            t = pq.ParquetFile(f).schema_arrow.field("embedding").type
        return int(getattr(t, "list_size", 0) or 0)
    return 0


def nn_reference(layout: RunLayout, pool: PoolStats) -> list[float] | None:
    """The target's own nearest-neighbour distance quantiles (written by embed_target), when the score output
    has the nn_distance column they are compared with; else None."""
    from mak_ray import storage

    if not np.isfinite(pool.nn_range[1]) or not storage.exists(layout.target_reference):
        return None
    return storage.read_json(layout.target_reference)["nn_distance"]


def gate_of(cfg: MakConfig, reference: list[float] | None) -> float:
    """``mak_gated``'s gate: the ``select.gate_quantile`` quantile of the target's own nearest-neighbour
    distances."""
    from mak_ray.mak import quantile_of

    if reference is None:
        raise ValueError(
            "mak_gated needs the score output's nn_distance column and the target's reference.json beside its "
            "embeddings; this run lacks them: rerun the embed_target and score stages"
        )
    gate = quantile_of(reference, cfg.select.gate_quantile)
    log.info(
        "select/mak_gated: gate at nn_distance %.5f (target quantile %g)", gate, cfg.select.gate_quantile
    )
    return gate


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    import ray

    summary: dict[str, Any] = {}
    todo = []
    for method in cfg.select.methods:
        out = layout.selection(method)
        if done(out.root):
            log.info("select/%s: complete, skipped", method)
            summary[method] = read_done(out.root)
        else:
            todo.append(method)
    if not todo:
        return summary
    device = kcenter_device(cfg) if DIVERSE_METHODS & set(todo) else "cpu"  # refuse at once, not after passes
    t0 = time.perf_counter()
    files = part_files(layout.scores.root)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups = file_groups(files, cpus)
    rate, sample_columns = _sample_rate(files), key_columns([KeySpec(m, 0.5, 0, {}) for m in todo])
    refs = [
        ray.remote(stats_pass).remote(g, first, sample_columns, rate, cfg.run.seed) for first, g in groups
    ]
    pool = merged(refs, PoolStats.merge) or PoolStats()
    t_stats = time.perf_counter() - t0
    usable, k = pool.usable, cfg.select.budget
    if k > usable:
        raise ValueError(f"select.budget={k} is larger than the usable pool ({usable} scored images)")
    log.info(
        "select: %d usable of %d pool rows in %d part files (%.1f s)", usable, pool.rows, len(files), t_stats
    )

    t1 = time.perf_counter()
    reference = nn_reference(layout, pool)
    gate = gate_of(cfg, reference) if "mak_gated" in todo else None
    far = None if reference is None else quantile_of(reference, FAR_QUANTILE)  # picks beyond it are counted
    specs = {m: KeySpec(m, cfg.select.loss_weight, cfg.run.seed, pool.stats.to_dict(), gate) for m in todo}
    n_cand = {m: candidate_count(m, k, cfg.select.core_ratio, usable) for m in todo}
    dim = _embedding_dim(files)
    for m in todo:
        _check_kcenter_memory(cfg, m, n_cand[m], dim)
    bounds = _sampled_bounds(pool, specs, n_cand)
    pool.sample = None  # the driver keeps no pool rows beyond this point
    out = {m: [layout.selection(m).candidates(g) for g in range(len(groups))] for m in todo}
    intervals = _first_intervals(pool, n_cand, cfg.select.loss_weight)
    run_candidates = functools.partial(
        _candidates, groups, files, specs, out, intervals, with_nn=far is not None
    )
    cut, written = run_candidates(bounds)
    short = [
        m for m, b in bounds.items() if b is not None and written[m] < n_cand[m]
    ]  # an unlucky sample: find these cuts exactly
    for m in short:
        log.warning(
            "select/%s: the sampled bound let through %d rows, fewer than %d", m, written[m], n_cand[m]
        )
        storage.delete(layout.selection(m).candidates_dir)
    if short:
        redo, written_redo = run_candidates({m: None for m in short})
        cut |= redo
        written |= written_redo
    t_cand = time.perf_counter() - t1

    finishing = {}
    for m in todo:
        spec = FinishSpec(
            method=m,
            k=k,
            n_candidates=n_cand[m],
            cut=cut[m],
            stats=pool.stats.to_dict(),
            loss_weight=cfg.select.loss_weight,
            target_root=layout.target_embeddings.root,
            device=device if m in DIVERSE_METHODS else "cpu",
            shards=cfg.select.kcenter_shards,
            per_shard_k=cfg.select.per_shard_k,
            seed=cfg.run.seed,
            far=far,
        )
        head = {
            "method": m,
            "budget": k,
            "candidates": n_cand[m],
            "usable_pool": usable,
            "pool_rows": pool.rows,
            "part_files": len(files),
            "tasks": len(groups),
            "seconds_stats": round(t_stats, 3),
            "seconds_candidates": round(t_cand, 3),
            "candidate_bound": (
                "all" if n_cand[m] >= usable else "histogram" if bounds[m] is None or m in short else "sample"
            ),
            "candidates_written": written[m],
        }
        if m == "mak_gated":
            head |= {"gate_quantile": cfg.select.gate_quantile, "gate_nn_distance": gate}
        gpus = 1 if spec.device == "cuda" else 0
        uris = out[m]
        finishing[m] = ray.remote(finish).options(num_gpus=gpus).remote(spec, uris, layout.selection(m), head)
    for m, ref in finishing.items():
        summary[m] = ray.get(ref)
        beyond = summary[m].get("picks_beyond_target_p90")
        if beyond is not None and beyond > FAR_PICKS:
            summary[m]["warnings"] = [
                f"{100 * beyond:.0f} % of the {m} picks lie farther from their nearest target image than 90 % of "
                "the target's own images lie from theirs: many of them are likely out of distribution (see the "
                "score diagnostics; 'mak_gated' keeps its picks inside the target's distances)"
            ]
            log.warning("select/%s: %s", m, summary[m]["warnings"][0])
        mark_done(layout.selection(m).root, summary[m])
        log.info(
            "select/%s: %d of %d usable pool images (stats %.1f s, candidates %.1f s, finish %.1f s)",
            m,
            summary[m]["selected"],
            usable,
            t_stats,
            t_cand,
            summary[m]["seconds_finish"],
        )
    return summary
