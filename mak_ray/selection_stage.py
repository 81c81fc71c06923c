"""The select stage: stream the score output, pick candidates, run K-center, write the selection.

Only two scalar columns of the pool are streamed (twice: once for the global z-statistics, once to keep
the best candidates); only the candidates' embeddings are then loaded, so no process ever holds the whole
pool. MAK and the baselines share this path and differ only in the ranking key and whether K-center runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.score import iter_score_columns, load_embeddings, load_valid_embeddings
from mak_ray.select import ScoreStats, TopN, mak_score, select, two_stage_k_center

log = logging.getLogger(__name__)

METHODS = ("mak", "random", "tailness", "proximity", "kcenter")


def _usable(columns: list[str], score_uri: str):
    """Batches of ``columns`` over the pool rows that were scored (error is null)."""
    for batch in iter_score_columns(score_uri, [*columns, "error"]):
        batch = batch.filter(pc.is_null(batch.column("error")))
        if batch.num_rows:
            yield batch


def _uniform_key(seed: int, ids: list[str]) -> np.ndarray:
    """A seeded uniform number per id that does not depend on order or sharding (for the random baseline)."""
    out = np.empty(len(ids), np.float64)
    for i, k in enumerate(ids):
        h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") / 2.0**64
    return out


def pool_stats(score_uri: str) -> ScoreStats:
    """Global z-statistics of ECLE and proximity over every usable pool row (one streaming pass)."""
    stats = ScoreStats.empty()
    for batch in _usable(["ecle", "proximity"], score_uri):
        stats.update(batch.column("ecle").to_numpy(), batch.column("proximity").to_numpy())
    return stats


def rank_candidates(cfg: MakConfig, method: str, score_uri: str, stats: ScoreStats, n: int) -> dict:
    """The ``n`` best pool rows for ``method`` (one streaming pass), with their ecle, proximity and score."""
    top = TopN(n)
    for batch in _usable(["id", "ecle", "proximity"], score_uri):
        ids = batch.column("id").to_pylist()
        e, p = batch.column("ecle").to_numpy(), batch.column("proximity").to_numpy()
        if method in ("mak", "kcenter"):
            key = mak_score(e, p, cfg.select.loss_weight, stats) if method == "mak" else np.zeros(len(ids))
        elif method == "tailness":
            key = np.asarray(e, np.float64)
        elif method == "proximity":
            key = -np.asarray(p, np.float64)
        elif method == "random":
            key = _uniform_key(cfg.run.seed, ids)
        else:
            raise ValueError(f"unknown selection method {method!r}; choose from {METHODS}")
        top.push(key, np.asarray(ids, dtype=str))
    cand_ids, _ = top.result()
    cand_ids = [str(i) for i in cand_ids]
    wanted = pa.array(cand_ids, pa.string())
    found: dict[str, tuple[float, float, str | None]] = {}
    for batch in _usable(["id", "ecle", "proximity", "label"], score_uri):
        hit = batch.filter(pc.is_in(batch.column("id"), value_set=wanted))
        for i, e, p, lab in zip(*(hit.column(c).to_pylist() for c in ("id", "ecle", "proximity", "label"))):
            found[i] = (e, p, lab)
    ecle = np.array([found[k][0] for k in cand_ids], np.float64)
    prox = np.array([found[k][1] for k in cand_ids], np.float64)
    return {
        "id": cand_ids,
        "ecle": ecle,
        "proximity": prox,
        "score": mak_score(ecle, prox, cfg.select.loss_weight, stats),
        "label": [found[k][2] for k in cand_ids],
    }


def run_selection(cfg: MakConfig, method: str, method_dir: str) -> dict:
    """Select ``select.budget`` pool ids with ``method``; write selection.parquet/.txt and a summary."""
    t0 = time.perf_counter()
    run = cfg.run.output_uri
    score_uri = storage.join(run, "score")
    k = cfg.select.budget
    stats = pool_stats(score_uri)
    usable = stats.ecle.count
    if k > usable:
        raise ValueError(f"select.budget={k} is larger than the usable pool ({usable} scored images)")
    diversity = method in ("mak", "kcenter")
    n_cand = {"mak": min(usable, math.ceil(cfg.select.core_ratio * k)), "kcenter": usable}.get(method, k)
    cand = rank_candidates(cfg, method, score_uri, stats, n_cand)
    summary: dict = {"method": method, "budget": k, "candidates": n_cand, "usable_pool": usable}
    if diversity:
        emb = load_embeddings(score_uri, cand["id"])
        target = load_valid_embeddings(storage.join(run, "embed", "target"))
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
            # The candidates are the top of the pool by the method's key, scored with pool-wide statistics,
            # so the in-memory selector gives the same picks as it would over the whole pool.
            chosen = select(
                method,
                k=k,
                ids=np.arange(len(emb)),
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
        picks = np.arange(k, dtype=np.int64)  # the streamed top-k is the selection, best first
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
    storage.write_parquet(table, storage.join(method_dir, "selection.parquet"))
    storage.write_text(storage.join(method_dir, "selection.txt"), "\n".join(ids) + "\n")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    storage.write_json(storage.join(method_dir, "summary.json"), summary)
    log.info("select/%s: %d of %d usable pool images in %.1f s", method, len(ids), usable, summary["seconds"])
    return summary
