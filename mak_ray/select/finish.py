"""The last step of one method's selection, run where the candidates are (a Ray task, on a GPU for K-center
when the cluster has one): read the candidate files, keep the rows at or before the cut, order them best
first, run K-center for the diverse methods, and write the selection."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mak_ray import storage
from mak_ray.layout import SelectionOutput
from mak_ray.mak import ScoreStats, mak_score
from mak_ray.registry import DIVERSE_METHODS
from mak_ray.select.cut import Cut
from mak_ray.select.output import write_selection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishSpec:
    method: str
    k: int
    n_candidates: int
    cut: Cut
    stats: dict[str, Any]  # ScoreStats.to_dict(), for the MAK score of each pick
    loss_weight: float
    target_root: str  # the target's embedding output (K-center's initial centers)
    device: str  # K-center: "cpu" or "cuda"
    shards: int = 1  # > 1: two-stage K-center over this many shards of the candidates
    per_shard_k: int | None = None
    metric: str = "cosine"


def embeddings_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list embedding column as float32 ``[n, D]``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim).astype(np.float32)


def load_candidates(uris: list[str], cut: Cut) -> pa.Table:
    """The candidate rows at or before ``cut``, best first (key descending, then file, then row)."""
    tables = [storage.read_parquet(u) for u in uris if storage.exists(u)]
    if not tables:
        return pa.table({"key": pa.array([], pa.float64())})
    table = pa.concat_tables(tables)
    keys = table.column("key").to_numpy()
    files = table.column("file").to_numpy()
    rows = table.column("row").to_numpy()
    keep = cut.mask(keys, files, rows)
    order = np.flatnonzero(keep)
    order = order[np.lexsort((rows[order], files[order], -keys[order]))]
    return table.take(pa.array(order))


def finish(spec: FinishSpec, candidate_uris: list[str], out: SelectionOutput, summary: dict) -> dict:
    """Select ``spec.k`` rows for ``spec.method`` from its candidates and write them to ``out``."""
    from mak_ray.kcenter import greedy_k_center, two_stage_k_center
    from mak_ray.score import load_valid_embeddings

    t0 = time.perf_counter()
    cand = load_candidates(candidate_uris, spec.cut)
    if cand.num_rows != spec.n_candidates:
        raise RuntimeError(
            f"select/{spec.method}: {cand.num_rows} candidates after the cut, expected {spec.n_candidates}"
        )
    summary = dict(summary)
    if spec.method in DIVERSE_METHODS:
        emb = embeddings_matrix(cand.column("embedding"))
        target = load_valid_embeddings(spec.target_root)
        t1 = time.perf_counter()
        if spec.shards > 1:
            two_stage: dict = {}
            parts = np.array_split(np.arange(len(emb)), spec.shards)
            picks, radius = two_stage_k_center(
                [(s, emb[s]) for s in parts],
                spec.k,
                init=target,
                per_shard_k=spec.per_shard_k,
                metric=spec.metric,
                stats=two_stage,
            )
            keep = ("per_shard_k", "union_size", "radius_bound", "full_radius", "rounds", "converged")
            summary["two_stage"] = {k: two_stage[k] for k in keep if k in two_stage}
        else:
            picks, radius = greedy_k_center(emb, spec.k, target, metric=spec.metric, device=spec.device)
        summary["seconds_kcenter"] = round(time.perf_counter() - t1, 3)
        summary["kcenter_device"] = spec.device
        summary["radius_first_last"] = [float(radius[0]), float(radius[-1])] if len(radius) else []
        picks = np.asarray(picks, np.int64)
    else:
        picks = np.arange(spec.k, dtype=np.int64)  # the candidates are the selection, best first
    chosen = cand.take(pa.array(picks))
    e = chosen.column("ecle").to_numpy(zero_copy_only=False).astype(np.float64)
    p = chosen.column("proximity").to_numpy(zero_copy_only=False).astype(np.float64)
    score = mak_score(e, p, spec.loss_weight, ScoreStats.from_dict(spec.stats))
    table = pa.table(
        {
            "id": chosen.column("id").cast(pa.string()),
            "order": pa.array(np.arange(len(picks)), pa.int64()),
            "ecle": pa.array(e, pa.float32()),
            "proximity": pa.array(p, pa.float32()),
            "score": pa.array(score, pa.float32()),
            "label": chosen.column("label").cast(pa.string()),
        }
    )
    summary["selected"] = table.num_rows
    summary["seconds_finish"] = round(time.perf_counter() - t0, 3)
    write_selection(out, table, summary)
    for uri in candidate_uris:
        storage.delete(uri)
    return summary
