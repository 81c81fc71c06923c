"""The resumable shard-level engine behind ``score_pool`` and ``embed_images``.

Flow: plan shards -> skip shards with a marker -> read + decode -> score + write (actor pool, model loaded
once per actor; each call's rows grouped by shard into ``shard=<sid>/part-*.parquet``, see
:mod:`mak_ray.score.parts`) -> the driver consumes only small per-file records, adds them up per shard and
writes ``_markers/<sid>.json`` once a shard's rows are all written.

Throughput on few CPUs: when the read tasks and the actors ask for the same CPU share, Ray fuses the read
into the actors, so one actor call reads and scores one shard with no copy in between. The scorer's
``map_batches`` therefore takes the blocks as they come (``batch_size=None``): a row batch size there would
make Ray bundle that many *shard descriptions* into one fused task, and one actor would read and score
every shard while the others idle. The scorer slices each block into ``score.batch_size`` rows itself.
Writing inside the actor avoids a third kind of process on the CPUs, an object-store copy of the outputs
and a cold write worker after the last batch.

No duplicates, ever: before a run, every shard without a marker loses its partial output; part names are
a function of the rows they hold (so a retried write task overwrites rather than adds); and shards or markers
that no longer belong to the planned input (the input changed) are removed. The summary re-counts from the
markers, and ``inputs == scored + failed`` is checked before it is written.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import logging
import posixpath
import resource
import time
from dataclasses import asdict

import numpy as np

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.data import Shard, image_dataset, plan_from_config
from mak_ray.data.duplicates import cross_shard_owners
from mak_ray.layout import ShardedOutput
from mak_ray.score.actors import Embedder, ModelActor, Scorer, ScorerParams, map_actors

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- resume


def _prepare(out: ShardedOutput, shards: list[Shard]) -> set[str]:
    """Ids of finished shards; removes partial output of unfinished ones and output of shards not planned."""
    planned = {s.shard_id for s in shards}
    done: set[str] = set()
    present: set[str] = set()
    if storage.exists(out.root):
        base = storage.filesystem(out.root)[1]
        for f in storage.list_files(out.root):
            rel = storage.filesystem(f)[1][len(base) + 1 :]
            top = rel.split("/", 1)[0]
            if top == out.MARKERS and rel.endswith(".json"):
                done.add(posixpath.basename(rel)[: -len(".json")])
            elif top.startswith(out.SHARD_PREFIX):
                present.add(top[len(out.SHARD_PREFIX) :])
    stale = (done | present) - planned
    if stale:
        log.warning(
            "%s: %d shards in the output are not in the planned input (it changed); removing them",
            out.root,
            len(stale),
        )
        for sid in stale:
            storage.delete(out.shard_dir(sid))
            storage.delete(out.marker(sid))
    done &= planned
    partial = (present & planned) - done
    for sid in sorted(partial):
        log.info("shard %s: removing partial output of an interrupted run", sid)
        storage.delete(out.shard_dir(sid))
    return done


def _read_markers(out: ShardedOutput, sids: list[str]) -> list[dict]:
    with cf.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda s: storage.read_json(out.marker(s)), sids))


# ------------------------------------------------------------------------------------------- engine


class _Progress:
    """Per-shard sums, markers when a shard completes, and a periodic rate/ETA log line."""

    def __init__(self, out: ShardedOutput, todo: list[Shard], log_every_s: float, what: str) -> None:
        self.out, self.what, self.log_every_s = out, what, log_every_s
        self.known = {s.shard_id: s.known_rows for s in todo}
        self.rows = collections.Counter()
        self.failed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.total: dict[str, int] = {}
        self.finished: dict[str, dict] = {}
        self.actor_rss = 0
        self.first_ready = float("inf")  # epoch seconds when the first actor had its model loaded
        self.start = self.last_log = time.monotonic()

    def add(self, sid: str, n: int, failed: dict, total: int, rss: int, ready_at: float = 0.0) -> None:
        self.rows[sid] += n
        self.failed[sid].update(failed)
        self.actor_rss = max(self.actor_rss, rss)
        if ready_at > 0:
            self.first_ready = min(self.first_ready, ready_at)
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
        storage.write_json(self.out.marker(sid), m)
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
    cfg: MakConfig,
    shards: list[Shard],
    actor: type[ModelActor],
    ctor: dict,
    out: ShardedOutput,
) -> dict:
    """Read the unfinished ``shards`` through ``actor`` actors (constructed with ``ctor`` plus where to write),
    mark each shard when its rows are all written, and write the summary."""
    t0, wall0 = time.monotonic(), time.time()
    done = _prepare(out, shards)
    todo = [s for s in shards if s.shard_id not in done]
    what = f"{actor.__name__.lower()} {out.root}"
    log.info("%s: %d shards, %d finished earlier, %d to do", what, len(shards), len(done), len(todo))
    progress = _Progress(out, todo, cfg.score.log_every_s, what)
    if todo:
        ctor = {**ctor, "write": {"out_uri": out.root}}
        owners = cross_shard_owners(shards, cfg.data)  # over every planned shard: reruns fail the same rows
        ds = image_dataset(todo, cfg.data, owners=owners)
        records = map_actors(ds, cfg, actor, ctor, shards=len(todo))
        for batch in records.iter_batches(batch_size=None, batch_format="numpy"):
            for sid, n, failed, total, rss, ready in zip(
                batch["shard"],
                batch["n"],
                batch["failed"],
                batch["total"],
                batch["max_rss"],
                batch["ready_at"],
            ):
                progress.add(str(sid), int(n), json.loads(failed), int(total), int(rss), float(ready))
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
    markers = list(progress.finished.values()) + _read_markers(out, sorted(done))
    seconds = time.monotonic() - t0
    startup = progress.first_ready - wall0 if np.isfinite(progress.first_ready) else None
    return _summarise(out, markers, seconds, sum(progress.rows.values()), progress.actor_rss, startup)


def _summarise(
    out: ShardedOutput,
    markers: list[dict],
    seconds: float,
    rows_this_run: int,
    actor_rss: int,
    startup_seconds: float | None = None,
) -> dict:
    """``images_per_s`` is end to end (this run's rows over all of ``seconds``). ``startup_seconds``: from the
    start of the run until the first scoring actor had its model loaded (worker start, imports, model load);
    ``steady_images_per_s`` counts the rows over the rest of the run only."""
    by_reason: collections.Counter = collections.Counter()
    for m in markers:
        by_reason.update(m["failed"])
    inputs = sum(m["rows"] for m in markers)
    scored = sum(m["scored"] for m in markers)
    failed = sum(by_reason.values())
    if inputs != scored + failed:
        raise RuntimeError(
            f"accounting mismatch in {out.root}: inputs {inputs} != scored {scored} + failed {failed}"
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
        "startup_seconds": None if startup_seconds is None else round(startup_seconds, 3),
        "steady_images_per_s": (
            round(rows_this_run / (seconds - startup_seconds), 2)
            if startup_seconds is not None and seconds > startup_seconds
            else None
        ),
        "driver_max_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "actor_max_rss_bytes": actor_rss,
    }
    storage.write_json(out.summary, summary)
    log.info("%s: %d inputs = %d scored + %d failed %s", out.root, inputs, scored, failed, dict(by_reason))
    return summary


# ------------------------------------------------------------------------------------------- entry points


def score_pool(
    cfg: MakConfig, model_uri: str, centroids: np.ndarray, out: ShardedOutput, bank_uri: str
) -> dict:
    """Score ``cfg.data.pool`` into ``out`` (ECLE, proximity to ``centroids``, embeddings); resumable. The
    negative bank is read from ``bank_uri``, or drawn and written there first."""
    import ray

    from mak_ray.score.bank import load_or_compute_bank

    shards = plan_from_config(cfg.data.pool, cfg.data)
    bank = load_or_compute_bank(cfg, model_uri, shards, bank_uri)
    ctor = {
        "params": asdict(ScorerParams.from_config(cfg, model_uri)),
        "bank": ray.put(np.ascontiguousarray(bank, dtype=np.float32)),
        "centroids": ray.put(np.ascontiguousarray(centroids, dtype=np.float32)),
    }
    return _run(cfg, shards, Scorer, ctor, out)


def embed_images(input_uri: str, cfg: MakConfig, model_uri: str, out: ShardedOutput) -> dict:
    """Clean-view backbone embeddings of every image under ``input_uri`` into ``out``; resumable."""
    shards = plan_from_config(input_uri, cfg.data)
    return _run(cfg, shards, Embedder, {"params": asdict(ScorerParams.from_config(cfg, model_uri))}, out)
