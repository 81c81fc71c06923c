"""The resumable shard-level engine behind ``score_pool`` and ``embed_images``.

Flow: plan shards -> skip shards with a marker -> read + decode (tasks) -> score (actor pool, model loaded
once per actor) -> write (tasks: each batch's rows grouped by shard into ``shard=<sid>/part-*.parquet``)
-> the driver consumes only small per-file records, adds them up per shard and writes
``_markers/<sid>.json`` once a shard's rows are all written.

No duplicates, ever: before a run, every shard without a marker loses its partial output; part names are
a function of the rows they hold (so a retried write task overwrites rather than adds); and shards or markers
that no longer belong to the planned input (the input changed) are removed. The summary re-counts from the
markers, and ``inputs == scored + failed`` is checked before it is written.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import logging
import posixpath
import resource
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.data import Shard, image_dataset, plan_from_config
from mak_ray.score.scorer import PoolScorer, ScorerParams

log = logging.getLogger(__name__)

MARKERS = "_markers"
SUMMARY = "summary.json"
WRITE_BATCH_ROWS = 2048  # rows per writer call: part files stay reasonably large without holding much


def shard_dir(out_uri: str, sid: str) -> str:
    return storage.join(out_uri, f"shard={sid}")


def marker_uri(out_uri: str, sid: str) -> str:
    return storage.join(out_uri, MARKERS, f"{sid}.json")


# ------------------------------------------------------------------------------------------- writer


def _table(cols: dict[str, np.ndarray], mode: str, emb_dtype: str) -> pa.Table:
    n = len(cols["id"])
    failed = np.array([e is not None for e in cols["error"]], dtype=bool)
    emb = np.asarray(cols["embedding"], dtype=emb_dtype)
    dim = emb.shape[1]
    flat = pa.array(emb.reshape(-1), type=pa.from_numpy_dtype(np.dtype(emb_dtype)))
    embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(failed))
    arrays = {"id": pa.array([str(i) for i in cols["id"]], pa.string())}
    if mode == "score":
        arrays["ecle"] = pa.array(np.asarray(cols["ecle"], np.float32), pa.float32(), mask=failed)
        arrays["proximity"] = pa.array(np.asarray(cols["proximity"], np.float32), pa.float32(), mask=failed)
    arrays["embedding"] = embedding
    arrays["label"] = pa.array([None if v is None else str(v) for v in cols["label"]], pa.string())
    arrays["error"] = pa.array([None if v is None else str(v) for v in cols["error"]], pa.string())
    arrays["shard"] = pa.array([str(s) for s in cols["shard"]], pa.string())
    assert all(len(a) == n for a in arrays.values())
    return pa.table(arrays)


def _write_parts(
    batch: dict[str, np.ndarray], out_uri: str, mode: str, emb_dtype: str
) -> dict[str, np.ndarray]:
    """Write one part file per shard present in ``batch``; return one small accounting record per file."""
    shards = np.array([str(s) for s in batch["shard"]], dtype=object)
    rec: dict[str, list] = collections.defaultdict(list)
    for sid in sorted(set(shards)):
        m = np.flatnonzero(shards == sid)
        m = m[np.argsort(batch["row"][m], kind="stable")]
        cols = {k: v[m] for k, v in batch.items()}
        rows = np.asarray(cols["row"], dtype=np.int64)
        digest = hashlib.sha1(rows.tobytes()).hexdigest()[:12]
        name = f"part-{int(rows[0]):09d}-{digest}.parquet"
        storage.write_parquet(_table(cols, mode, emb_dtype), storage.join(shard_dir(out_uri, sid), name))
        reasons = collections.Counter(str(e) for e in cols["error"] if e is not None)
        rec["shard"].append(sid)
        rec["n"].append(len(m))
        rec["failed"].append(json.dumps(dict(reasons)))
        rec["total"].append(int(np.max(cols["shard_rows"])))
        rec["max_rss"].append(int(np.max(cols["max_rss"])) if "max_rss" in cols else 0)
    return {
        "shard": np.array(rec["shard"], dtype=object),
        "n": np.array(rec["n"], dtype=np.int64),
        "failed": np.array(rec["failed"], dtype=object),
        "total": np.array(rec["total"], dtype=np.int64),
        "max_rss": np.array(rec["max_rss"], dtype=np.int64),
    }


# ------------------------------------------------------------------------------------------- resume


def _prepare(out_uri: str, shards: list[Shard]) -> set[str]:
    """Ids of finished shards; removes partial output of unfinished ones and output of shards not planned."""
    planned = {s.shard_id for s in shards}
    done: set[str] = set()
    present: set[str] = set()
    if storage.exists(out_uri):
        base = storage.filesystem(out_uri)[1]
        for f in storage.list_files(out_uri):
            rel = storage.filesystem(f)[1][len(base) + 1 :]
            top = rel.split("/", 1)[0]
            if top == MARKERS and rel.endswith(".json"):
                done.add(posixpath.basename(rel)[: -len(".json")])
            elif top.startswith("shard="):
                present.add(top[len("shard=") :])
    stale = (done | present) - planned
    if stale:
        log.warning(
            "%s: %d shards in the output are not in the planned input (it changed); removing them",
            out_uri,
            len(stale),
        )
        for sid in stale:
            storage.delete(shard_dir(out_uri, sid))
            storage.delete(marker_uri(out_uri, sid))
    done &= planned
    partial = (present & planned) - done
    for sid in sorted(partial):
        log.info("shard %s: removing partial output of an interrupted run", sid)
        storage.delete(shard_dir(out_uri, sid))
    return done


def _read_markers(out_uri: str, sids: list[str]) -> list[dict]:
    with cf.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda s: storage.read_json(marker_uri(out_uri, s)), sids))


# ------------------------------------------------------------------------------------------- engine


class _Progress:
    """Per-shard sums, markers when a shard completes, and a periodic rate/ETA log line."""

    def __init__(self, out_uri: str, todo: list[Shard], log_every_s: float, what: str) -> None:
        self.out_uri, self.what, self.log_every_s = out_uri, what, log_every_s
        self.known = {s.shard_id: s.known_rows for s in todo}
        self.rows = collections.Counter()
        self.failed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.total: dict[str, int] = {}
        self.finished: dict[str, dict] = {}
        self.actor_rss = 0
        self.start = self.last_log = time.monotonic()

    def add(self, sid: str, n: int, failed: dict, total: int, rss: int) -> None:
        self.rows[sid] += n
        self.failed[sid].update(failed)
        self.actor_rss = max(self.actor_rss, rss)
        if total:
            self.total[sid] = total
        if sid in self.total and self.rows[sid] > self.total[sid]:
            raise RuntimeError(f"shard {sid}: {self.rows[sid]} rows written but it has {self.total[sid]}")
        if self.total.get(sid) == self.rows[sid]:
            self.finish(sid)
        now = time.monotonic()
        if now - self.last_log >= self.log_every_s:
            self.last_log = now
            self.log_line(now)

    def finish(self, sid: str) -> None:
        if sid in self.finished:
            return
        failed = dict(self.failed[sid])
        m = {
            "shard": sid,
            "rows": int(self.rows[sid]),
            "failed": failed,
            "scored": int(self.rows[sid] - sum(failed.values())),
        }
        storage.write_json(marker_uri(self.out_uri, sid), m)
        self.finished[sid] = m

    def log_line(self, now: float) -> None:
        done_rows = sum(self.rows.values())
        rate = done_rows / max(now - self.start, 1e-9)
        finished_sizes = [m["rows"] for m in self.finished.values()]
        mean = float(np.mean(finished_sizes)) if finished_sizes else None
        est = 0.0
        for sid, k in self.known.items():
            if sid in self.finished:
                est += self.finished[sid]["rows"]
            elif k is not None:
                est += k
            elif mean is not None:
                est += mean
            else:
                est = float("nan")
                break
        eta = (est - done_rows) / rate if rate > 0 and np.isfinite(est) else float("nan")
        eta_txt = f"{eta:.0f}s" if np.isfinite(eta) else "?"
        log.info(
            "%s: %d images (%d/%d shards), %.1f images/s, ETA %s",
            self.what,
            done_rows,
            len(self.finished),
            len(self.known),
            rate,
            eta_txt,
        )


def _run(
    cfg: MakConfig, shards: list[Shard], params: ScorerParams, out_uri: str, bank=None, centroids=None
) -> dict:
    import ray

    t0 = time.monotonic()
    done = _prepare(out_uri, shards)
    todo = [s for s in shards if s.shard_id not in done]
    what = f"{params.mode} {out_uri}"
    log.info("%s: %d shards, %d finished earlier, %d to do", what, len(shards), len(done), len(todo))
    progress = _Progress(out_uri, todo, cfg.score.log_every_s, what)
    if todo:
        sc = cfg.score
        ctor = {"params": asdict(params)}
        if bank is not None:
            ctor["bank"] = ray.put(np.ascontiguousarray(bank, dtype=np.float32))
        if centroids is not None:
            ctor["centroids"] = ray.put(np.ascontiguousarray(centroids, dtype=np.float32))
        records = (
            image_dataset(todo, cfg.data, batch_rows=sc.batch_size)
            .map_batches(
                PoolScorer,
                fn_constructor_kwargs=ctor,
                batch_size=sc.batch_size,
                num_cpus=sc.cpus_per_actor,
                num_gpus=sc.gpus_per_actor,
                compute=ray.data.ActorPoolStrategy(min_size=sc.min_actors, max_size=sc.num_actors),
            )
            .map_batches(
                _write_parts,
                fn_kwargs={"out_uri": out_uri, "mode": params.mode, "emb_dtype": params.embedding_dtype},
                batch_size=max(WRITE_BATCH_ROWS, sc.batch_size),
                num_cpus=0.5,
            )
        )
        for batch in records.iter_batches(batch_size=None, batch_format="numpy"):
            for sid, n, failed, total, rss in zip(
                batch["shard"], batch["n"], batch["failed"], batch["total"], batch["max_rss"]
            ):
                progress.add(str(sid), int(n), json.loads(failed), int(total), int(rss))
        # The stream ended without error, so every row of every shard has been written: mark the rest
        # (shards whose last row was not seen in a record of their own, and empty shards).
        for s in todo:
            if s.shard_id in progress.total and progress.total[s.shard_id] != progress.rows[s.shard_id]:
                raise RuntimeError(
                    f"shard {s.shard_id}: {progress.rows[s.shard_id]} rows written, "
                    f"{progress.total[s.shard_id]} read"
                )
            progress.finish(s.shard_id)
        progress.log_line(time.monotonic())
    markers = list(progress.finished.values()) + _read_markers(out_uri, sorted(done))
    return _summarise(
        out_uri, markers, time.monotonic() - t0, sum(progress.rows.values()), progress.actor_rss
    )


def _summarise(out_uri: str, markers: list[dict], seconds: float, rows_this_run: int, actor_rss: int) -> dict:
    by_reason: collections.Counter = collections.Counter()
    for m in markers:
        by_reason.update(m["failed"])
    inputs = sum(m["rows"] for m in markers)
    scored = sum(m["scored"] for m in markers)
    failed = sum(by_reason.values())
    if inputs != scored + failed:
        raise RuntimeError(
            f"accounting mismatch in {out_uri}: inputs {inputs} != scored {scored} + failed {failed}"
        )
    summary = {
        "inputs": inputs,
        "scored": scored,
        "failed": failed,
        "failed_by_reason": dict(sorted(by_reason.items())),
        "shards": len(markers),
        "rows_this_run": rows_this_run,
        "seconds": round(seconds, 3),
        "images_per_s": round(rows_this_run / seconds, 2) if seconds > 0 else None,
        "driver_max_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "actor_max_rss_bytes": actor_rss,
    }
    storage.write_json(storage.join(out_uri, SUMMARY), summary)
    log.info("%s: %d inputs = %d scored + %d failed %s", out_uri, inputs, scored, failed, dict(by_reason))
    return summary


# ------------------------------------------------------------------------------------------- entry points


def score_pool(cfg: MakConfig, model_uri: str, centroids: np.ndarray, out_uri: str) -> dict:
    """Score ``cfg.data.pool`` into ``out_uri`` (ECLE, proximity to ``centroids``, embeddings); resumable."""
    from mak_ray.score.bank import load_or_compute_bank

    shards = plan_from_config(cfg.data.pool, cfg.data)
    bank = load_or_compute_bank(cfg, model_uri, shards, out_uri)
    sc = cfg.score
    params = ScorerParams(
        model_uri=model_uri,
        mode="score",
        image_size=cfg.data.image_size,
        views=sc.views,
        seed=cfg.run.seed,
        temperature=sc.temperature,
        ecle_batch_size=sc.ecle_batch_size,
        ecle_repeats=sc.ecle_repeats,
        use_gpu=sc.gpus_per_actor > 0,
        embedding_dtype=sc.embedding_dtype,
    )
    return _run(cfg, shards, params, out_uri, bank=bank, centroids=centroids)


def embed_images(input_uri: str, cfg: MakConfig, model_uri: str, out_uri: str) -> dict:
    """Clean-view backbone embeddings of every image under ``input_uri`` into ``out_uri``; resumable."""
    shards = plan_from_config(input_uri, cfg.data)
    params = ScorerParams(
        model_uri=model_uri,
        mode="embed",
        image_size=cfg.data.image_size,
        seed=cfg.run.seed,
        use_gpu=cfg.score.gpus_per_actor > 0,
        embedding_dtype=cfg.score.embedding_dtype,
    )
    return _run(cfg, shards, params, out_uri)
