"""The last step of one method's selection, run where the candidates are (a Ray task, on a GPU for K-center
when the cluster has one): find the exact cut among the candidates when the stage wrote them from a sampled
bound, read the candidate files, keep the rows at or before the cut, order them best first, run K-center for the
diverse methods, and write the selection."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from mak_ray import storage
from mak_ray.layout import SelectionOutput
from mak_ray.mak import ScoreStats, mak_score
from mak_ray.registry import DIVERSE_METHODS
from mak_ray.select.cut import Cut, cut_of_rows
from mak_ray.select.output import write_selection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishSpec:
    method: str
    k: int
    n_candidates: int
    cut: (
        Cut | None
    )  # None: every candidate file's row at or above a sampled bound; the cut is the n-th of them
    stats: dict[str, Any]  # ScoreStats.to_dict(), for the MAK score of each pick
    loss_weight: float
    target_root: str  # the target's embedding output (K-center's initial centers)
    device: str  # K-center: "cpu" or "cuda"
    shards: int = 1  # > 1: two-stage K-center over this many spatial shards of the candidates
    per_shard_k: int | None = None
    seed: int = 0
    metric: str = "cosine"
    # the target's 0.9 quantile of its own nearest-neighbour distance: picks farther than it are counted
    far: float | None = None


def embeddings_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list embedding column as float32 ``[n, D]``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim).astype(np.float32)


def candidates_cut(uris: list[str], n: int) -> Cut:
    """The cut at the ``n``-th best of every row in the candidate files (only their key, file and row are read)."""
    tables = [storage.read_parquet(u, columns=["key", "file", "row"]) for u in uris if storage.exists(u)]
    cols = {
        c: np.concatenate([t.column(c).to_numpy() for t in tables]) if tables else np.zeros(0)
        for c in ("key", "file", "row")
    }
    return cut_of_rows(cols["key"], cols["file"], cols["row"], n)


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


class CandidateShard:
    """Loads one spatial shard of a method's candidates where it runs: every candidate file is read in turn,
    cut, and only the rows whose nearest centroid is ``index`` are kept (best first, as in one task)."""

    def __init__(self, uris: list[str], cut: Cut, centroids: np.ndarray, index: int, metric: str) -> None:
        self.uris, self.cut, self.centroids, self.index, self.metric = uris, cut, centroids, index, metric

    def __call__(self) -> tuple[np.ndarray, pa.Table]:
        from mak_ray.kcenter.two_stage import nearest_centroid

        kept = []
        for uri in self.uris:
            t = load_candidates([uri], self.cut)
            if not t.num_rows:
                continue
            cell = nearest_centroid(embeddings_matrix(t.column("embedding")), self.centroids, self.metric)
            kept.append(t.take(pa.array(np.flatnonzero(cell == self.index))))
        if not kept:
            return np.zeros((0, self.centroids.shape[1]), np.float32), None
        t = pa.concat_tables(kept)
        order = np.lexsort(
            (t.column("row").to_numpy(), t.column("file").to_numpy(), -t.column("key").to_numpy())
        )
        t = t.take(pa.array(order))
        return embeddings_matrix(t.column("embedding")), t.drop_columns(["embedding"])


def _sample(uris: list[str], cut: Cut, size: int, seed: int) -> np.ndarray:
    """Embeddings of about ``size`` candidates from up to 64 candidate files chosen at random."""
    rng = np.random.default_rng([seed, 0x5A])
    files = [uris[i] for i in sorted(rng.choice(len(uris), min(len(uris), 64), replace=False))]
    per_file = max(1, -(-size // len(files)))
    parts = []
    for uri in files:
        if not storage.exists(uri):
            continue
        t = storage.read_parquet(uri, columns=["key", "file", "row", "embedding"])
        keep = np.flatnonzero(
            cut.mask(t.column("key").to_numpy(), t.column("file").to_numpy(), t.column("row").to_numpy())
        )
        if len(keep):  # only the sampled rows' embeddings are converted
            rows = np.sort(rng.choice(keep, min(len(keep), per_file), replace=False))
            parts.append(embeddings_matrix(t.column("embedding").take(pa.array(rows))))
    return np.concatenate(parts)


def shard_resources(shards: int, device: str) -> dict[str, Any]:
    """Ray options for ``shards`` shard actors started from a task: spread over the nodes, each asking for a
    share of the CPUs that leaves one for the task (all of them must be placed at once, or none proceeds)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    opts: dict[str, Any] = {
        "num_cpus": max(0.01, min(1.0, math.floor(100 * max(cpus - 1, 0) / shards) / 100)),
        "scheduling_strategy": "SPREAD",
    }
    if device == "cuda":  # only when asked: an explicit num_gpus=0 changes how Ray reserves CPUs for actors
        opts["num_gpus"] = 1.0 / shards
    return opts


def two_stage(spec: FinishSpec, uris: list[str], target: np.ndarray) -> tuple[pa.Table, np.ndarray, dict]:
    """Two-stage K-center over the candidates, which stay in the shard actors: the chosen rows in pick order,
    the radius bound after each pick, and the run's figures."""
    import ray

    from mak_ray.kcenter.two_stage import SAMPLE_PER_SHARD, ShardWorker, run_two_stage, spatial_centroids

    sample = _sample(uris, spec.cut, spec.shards * SAMPLE_PER_SHARD, spec.seed)
    centroids = spatial_centroids(sample, spec.shards, spec.metric, spec.seed)
    actor = ray.remote(ShardWorker).options(**shard_resources(len(centroids), spec.device))
    workers = [
        actor.remote(
            CandidateShard(uris, spec.cut, centroids, j, spec.metric), target, spec.metric, spec.device
        )
        for j in range(len(centroids))
    ]
    merged, info, _ = run_two_stage(workers, spec.k, spec.per_shard_k, remote=True)
    if sum(info["shard_sizes"]) != spec.n_candidates:
        raise RuntimeError(
            f"select/{spec.method}: the shards hold {sum(info['shard_sizes'])} candidates, "
            f"expected {spec.n_candidates}"
        )
    tables = [
        t for t in ray.get([w.selected_rows.remote(int(c)) for w, c in zip(workers, merged.counts)]) if t
    ]
    offsets = np.concatenate([[0], np.cumsum(merged.counts)[:-1]])
    chosen = pa.concat_tables(tables).take(pa.array(offsets[merged.order[:, 0]] + merged.order[:, 1]))
    return chosen, merged.radii, info


def finish(spec: FinishSpec, candidate_uris: list[str], out: SelectionOutput, summary: dict) -> dict:
    """Select ``spec.k`` rows for ``spec.method`` from its candidates and write them to ``out``."""
    from mak_ray.kcenter import greedy_k_center
    from mak_ray.score import load_valid_embeddings

    t0 = time.perf_counter()
    summary = dict(summary)
    if spec.cut is None:
        spec = replace(spec, cut=candidates_cut(candidate_uris, spec.n_candidates))
    diverse = spec.method in DIVERSE_METHODS
    if diverse and spec.shards > 1:
        target = load_valid_embeddings(spec.target_root)
        t1 = time.perf_counter()
        chosen, radius, info = two_stage(spec, candidate_uris, target)
        summary["two_stage"] = info
    else:
        cand = load_candidates(candidate_uris, spec.cut)
        if cand.num_rows != spec.n_candidates:
            raise RuntimeError(
                f"select/{spec.method}: {cand.num_rows} candidates after the cut, expected {spec.n_candidates}"
            )
        if diverse:
            emb = embeddings_matrix(cand.column("embedding"))
            target = load_valid_embeddings(spec.target_root)
            t1 = time.perf_counter()
            picks, radius = greedy_k_center(emb, spec.k, target, metric=spec.metric, device=spec.device)
            picks = np.asarray(picks, np.int64)
        else:
            picks = np.arange(spec.k, dtype=np.int64)  # the candidates are the selection, best first
        chosen = cand.take(pa.array(picks))
    if diverse:
        summary["seconds_kcenter"] = round(time.perf_counter() - t1, 3)
        summary["kcenter_device"] = spec.device
        summary["radius_first_last"] = [float(radius[0]), float(radius[-1])] if len(radius) else []
    e = chosen.column("ecle").to_numpy(zero_copy_only=False).astype(np.float64)
    p = chosen.column("proximity").to_numpy(zero_copy_only=False).astype(np.float64)
    score = mak_score(e, p, spec.loss_weight, ScoreStats.from_dict(spec.stats))
    nn = chosen.column("nn_distance").cast(pa.float32()) if "nn_distance" in chosen.column_names else None
    table = pa.table(
        {
            "id": chosen.column("id").cast(pa.string()),
            "order": pa.array(np.arange(chosen.num_rows), pa.int64()),
            "ecle": pa.array(e, pa.float32()),
            "proximity": pa.array(p, pa.float32()),
            "nn_distance": nn if nn is not None else pa.nulls(chosen.num_rows, pa.float32()),
            "score": pa.array(score, pa.float32()),
            "label": chosen.column("label").cast(pa.string()),
        }
    )
    if spec.far is not None and nn is not None and nn.null_count < len(nn):
        d = nn.to_numpy(zero_copy_only=False).astype(np.float64)
        d = d[np.isfinite(d)]
        summary["picks_beyond_target_p90"] = float(np.mean(d > spec.far))
    summary["selected"] = table.num_rows
    summary["seconds_finish"] = round(time.perf_counter() - t0, 3)
    write_selection(out, table, summary)
    for uri in candidate_uris:
        storage.delete(uri)
    return summary
