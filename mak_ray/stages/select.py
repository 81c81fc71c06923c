"""Stage ``select``: every configured method's selection from the score output.

The pool is streamed, never loaded: one pass over the ``ecle``/``proximity`` columns gives the pool-wide
z-statistics (shared by every method), one pass per method keeps its best candidates by the method's ranking key
(:mod:`mak_ray.select.methods`; ties go to the lower position in the output's order), and only the candidates'
embeddings are then loaded for K-center.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout, done, mark_done, read_done
from mak_ray.mak import ScoreStats, mak_score
from mak_ray.registry import DIVERSE_METHODS
from mak_ray.score import iter_score_columns, load_embeddings, load_valid_embeddings
from mak_ray.select import TopN, candidate_count, ranking_key, select
from mak_ray.select.output import write_selection

log = logging.getLogger(__name__)


def _usable(columns: list[str], score_root: str):
    """Batches of ``columns`` over the usable pool rows, with their position in the output's order."""
    pos = 0
    for batch in iter_score_columns(score_root, [*columns, "error"]):
        ok = pc.is_null(batch.column("error"))
        positions = np.arange(pos, pos + batch.num_rows, dtype=np.int64)
        pos += batch.num_rows
        batch = batch.filter(ok)
        if batch.num_rows:
            yield batch, positions[ok.to_numpy(zero_copy_only=False)]


def pool_stats(score_root: str) -> ScoreStats:
    """Global z-statistics of ECLE and proximity over every usable pool row (one streaming pass)."""
    stats = ScoreStats.empty()
    for batch, _ in _usable(["ecle", "proximity"], score_root):
        stats.update(batch.column("ecle").to_numpy(), batch.column("proximity").to_numpy())
    return stats


def rank_candidates(cfg: MakConfig, method: str, score_root: str, stats: ScoreStats, n: int) -> dict:
    """The ``n`` best usable pool rows for ``method``, best first, with their id, ecle, proximity, label."""
    top = TopN(n)
    columns = ["ecle", "proximity"] + (["id"] if method == "random" else [])
    for batch, positions in _usable(columns, score_root):
        key = ranking_key(
            method,
            ecle=batch.column("ecle").to_numpy(),
            proximity=batch.column("proximity").to_numpy(),
            ids=batch.column("id") if method == "random" else None,
            stats=stats,
            loss_weight=cfg.select.loss_weight,
            seed=cfg.run.seed,
            n=batch.num_rows,
        )
        top.push(key, positions)
    wanted, _ = top.result()
    order = np.argsort(wanted, kind="stable")
    rows: dict[str, list] = {c: [] for c in ("id", "ecle", "proximity", "label")}
    found = []
    for batch, positions in _usable(list(rows), score_root):
        hit = np.isin(positions, wanted)
        if hit.any():
            sub = batch.filter(pa.array(hit))
            for c in rows:
                rows[c].extend(sub.column(c).to_pylist())
            found.append(positions[hit])
    got = np.concatenate(found) if found else np.zeros(0, np.int64)
    rank = np.searchsorted(wanted[order], got)  # each found row's place among the wanted, then best first
    place = np.empty(len(got), np.int64)
    place[order[rank]] = np.arange(len(got))  # wanted[i] is found at place[i]
    cand = {c: [rows[c][place[i]] for i in range(len(wanted))] for c in rows}
    ecle = np.asarray(cand["ecle"], np.float64)
    prox = np.asarray(cand["proximity"], np.float64)
    return {
        "id": cand["id"],
        "ecle": ecle,
        "proximity": prox,
        "score": mak_score(ecle, prox, cfg.select.loss_weight, stats),
        "label": cand["label"],
    }


def select_method(cfg: MakConfig, layout: RunLayout, method: str, stats: ScoreStats) -> dict:
    """Select ``select.budget`` pool ids with ``method``; write its selection and return its summary."""
    from mak_ray.kcenter import two_stage_k_center

    t0 = time.perf_counter()
    score_root = layout.scores.root
    k = cfg.select.budget
    usable = stats.ecle.count
    if k > usable:
        raise ValueError(f"select.budget={k} is larger than the usable pool ({usable} scored images)")
    n_cand = candidate_count(method, k, cfg.select.core_ratio, usable)
    cand = rank_candidates(cfg, method, score_root, stats, n_cand)
    summary: dict = {"method": method, "budget": k, "candidates": n_cand, "usable_pool": usable}
    if method in DIVERSE_METHODS:
        emb = load_embeddings(score_root, cand["id"])
        target = load_valid_embeddings(layout.target_embeddings.root)
        if cfg.select.kcenter_shards > 1:
            two_stage: dict = {}
            shards = np.array_split(np.arange(len(emb)), cfg.select.kcenter_shards)
            picks, radius = two_stage_k_center(
                [(s, emb[s]) for s in shards],
                k,
                init=target,
                per_shard_k=cfg.select.per_shard_k,
                stats=two_stage,
            )
            keep = ("per_shard_k", "radius_bound", "full_radius", "rounds", "converged")
            summary["two_stage"] = {k2: v for k2, v in two_stage.items() if k2 in keep}
        else:
            # The candidates are the pool's best rows by the method's key, in key order, scored with the
            # pool-wide statistics, so selecting among them picks what selecting from the whole pool would.
            chosen = select(
                method,
                k=k,
                ecle=cand["ecle"],
                proximity=cand["proximity"],
                embeddings=emb,
                target_embeddings=target,
                stats=stats,
                loss_weight=cfg.select.loss_weight,
                core_ratio=cfg.select.core_ratio,
            )
            picks, radius = chosen.index, chosen.radii
        picks = np.asarray(picks, np.int64)
        summary["radius_first_last"] = [float(radius[0]), float(radius[-1])] if len(radius) else []
    else:
        picks = np.arange(k, dtype=np.int64)  # the candidates are the selection, best first
    ids = [cand["id"][i] for i in picks]
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "order": pa.array(np.arange(len(ids)), pa.int64()),
            "ecle": pa.array(cand["ecle"][picks], pa.float32()),
            "proximity": pa.array(cand["proximity"][picks], pa.float32()),
            "score": pa.array(cand["score"][picks], pa.float32()),
            "label": pa.array([cand["label"][i] for i in picks], pa.string()),
        }
    )
    summary["selected"] = len(ids)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    write_selection(layout.selection(method), table, summary)
    log.info("select/%s: %d of %d usable pool images in %.1f s", method, len(ids), usable, summary["seconds"])
    return summary


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    stats = None
    summary = {}
    for method in cfg.select.methods:
        out = layout.selection(method)
        if done(out.root):
            log.info("select/%s: complete, skipped", method)
            summary[method] = read_done(out.root)
            continue
        stats = stats or pool_stats(layout.scores.root)
        summary[method] = select_method(cfg, layout, method, stats)
        mark_done(out.root, summary[method])
    return summary
