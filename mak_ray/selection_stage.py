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
import pyarrow.dataset as pads

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.select import ScoreStats, TopN, greedy_k_center, mak_score, two_stage_k_center

log = logging.getLogger(__name__)

METHODS = ("mak", "random", "tailness", "proximity", "kcenter")
VALID = pc.is_null(pads.field("error"))


def load_valid_embeddings(uri: str, ids: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Embeddings (float32) of the rows without error under ``uri``, optionally only ``ids`` (in that order)."""
    flt = VALID if ids is None else VALID & pc.is_in(pads.field("id"), value_set=pa.array(ids, pa.string()))
    got_ids: list[str] = []
    chunks: list[np.ndarray] = []
    for batch in storage.iter_parquet_batches(uri, ["id", "embedding"], filter=flt):
        if batch.num_rows == 0:
            continue
        got_ids.extend(batch.column("id").to_pylist())
        emb = batch.column("embedding")
        width = emb.type.list_size if pa.types.is_fixed_size_list(emb.type) else None
        flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        chunks.append(flat.reshape(batch.num_rows, width or -1))
    if not chunks:
        raise ValueError(f"no usable embeddings under {uri}")
    emb = np.concatenate(chunks)
    if ids is not None:
        pos = {k: i for i, k in enumerate(got_ids)}
        missing = [k for k in ids if k not in pos]
        if missing:
            raise ValueError(f"{len(missing)} ids have no embedding under {uri}, e.g. {missing[:3]}")
        emb = emb[[pos[k] for k in ids]]
        got_ids = list(ids)
    return emb, got_ids


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
    for batch in storage.iter_parquet_batches(score_uri, ["ecle", "proximity"], filter=VALID):
        stats.update(batch.column("ecle").to_numpy(), batch.column("proximity").to_numpy())
    return stats


def rank_candidates(cfg: MakConfig, method: str, score_uri: str, stats: ScoreStats, n: int) -> dict:
    """The ``n`` best pool rows for ``method`` (one streaming pass), with their ecle, proximity and score."""
    top = TopN(n)
    for batch in storage.iter_parquet_batches(score_uri, ["id", "ecle", "proximity"], filter=VALID):
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
    table = pads.dataset(
        [storage.filesystem(u)[1] for u in storage.list_files(score_uri, (".parquet",))],
        filesystem=storage.filesystem(score_uri)[0],
    ).to_table(columns=["id", "ecle", "proximity", "label"],
               filter=VALID & pc.is_in(pads.field("id"), value_set=pa.array(cand_ids, pa.string())))
    row = {k: i for i, k in enumerate(table.column("id").to_pylist())}
    order = [row[k] for k in cand_ids]
    ecle = table.column("ecle").to_numpy()[order]
    prox = table.column("proximity").to_numpy()[order]
    return {
        "id": cand_ids,
        "ecle": ecle,
        "proximity": prox,
        "score": mak_score(ecle, prox, cfg.select.loss_weight, stats),
        "label": [table.column("label")[i].as_py() for i in order],
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
        emb, _ = load_valid_embeddings(score_uri, cand["id"])
        target, _ = load_valid_embeddings(storage.join(run, "embed", "target"))
        if cfg.select.kcenter_shards > 1:
            shards = np.array_split(np.arange(len(emb)), cfg.select.kcenter_shards)
            picks, radius = two_stage_k_center(
                [emb[s] for s in shards], k, init=target, per_shard_k=cfg.select.per_shard_k
            )
        else:
            picks, radius = greedy_k_center(emb, k, init=target, metric="cosine")
        picks = np.asarray(picks, np.int64)
        summary["radius"] = [float(r) for r in np.asarray(radius)[[0, -1]]] if len(radius) else []
    else:
        picks = np.arange(k, dtype=np.int64)
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
