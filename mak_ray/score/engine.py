"""The resumable shard-level engine behind ``score_pool`` and ``embed_images``.

Flow: plan the input (:func:`mak_ray.data.plan_input`: a manifest made by parallel listing tasks, reused when
the input is unchanged) -> keep the shards already finished with the same params -> read + decode ->
score + write (actor pool, model loaded once per actor; each call's rows grouped by shard into
``shard=<sid>/part-*.parquet``, see :mod:`mak_ray.score.parts`) -> the driver consumes only small per-file
records, adds them up per shard in flight and writes the markers of finished shards in batches
(:mod:`mak_ray.score.markers`).

Throughput on few CPUs: when the read tasks and the actors ask for the same CPU share, Ray fuses the read
into the actors, so one actor call reads and scores one read block (one shard, or several small ones) with
no copy in between. The scorer's ``map_batches`` therefore takes the blocks as they come
(``batch_size=None``): a row batch size there would make Ray bundle that many *read blocks* into one fused
task, and one actor would read and score every shard while the others idle. The scorer slices each block
into ``score.batch_size`` rows itself. Writing inside the actor avoids a third kind of process on the CPUs,
an object-store copy of the outputs and a cold write worker after the last batch.

Incremental: a shard's id depends only on its own objects, and ``params.json`` records what every row
depends on (the model's digest, the negative bank's and the centroids' digests, the scoring settings). A
rerun with the same params keeps every finished shard that is still planned; into each new shard it first
carries the rows of its objects that an old shard (finished, no longer planned) holds unchanged
(:mod:`mak_ray.score.carry`), then reads and scores only the rest, and finally removes the old shards' output
(a grown or shrunk pool costs only its change, even when new objects fall among existing names). Shards are
read in blocks of up to ``data.files_per_shard`` rows (:func:`mak_ray.data.dataset.read_blocks`), so the
many small residual shards of a pool grown among its names share a few read/score tasks instead of paying
the scheduler's per-task cost each; every row still lands in its own shard's part files. A rerun
with other params starts the output afresh, saying which field changed.

No duplicates, ever: before a run, every shard without a marker loses its partial output; part names are
a function of the rows they hold (so a retried write task overwrites rather than adds); and shards or markers
that no longer belong to the planned input are removed. The summary re-counts from the markers, and
``inputs == scored + failed`` is checked before it is written; entries the listing skipped are reported
beside (``skipped``).

The driver holds the shard index (a few dozen bytes per shard) and the counters of the shards in flight,
never a row or an object name.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import resource
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.data import Plan, image_dataset
from mak_ray.data.dataset import read_blocks
from mak_ray.data.duplicates import cross_shard_owners
from mak_ray.data.manifest import plan_for
from mak_ray.layout import ShardedOutput
from mak_ray.score import markers
from mak_ray.score.actors import Embedder, ModelActor, Scorer, ScorerParams, map_actors
from mak_ray.score.carry import RECORD_SCHEMA, carry_over, residual_dir
from mak_ray.score.parts import RECORD_COLUMNS

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- resume


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def digest_array(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return digest_bytes(str(a.shape).encode() + a.tobytes())


def output_params(cfg: MakConfig, actor: type[ModelActor], model_uri: str, **digests: str) -> dict[str, Any]:
    """What every row of a sharded output depends on (besides its own image)."""
    params = asdict(ScorerParams.from_config(cfg, model_uri))
    unused = ("model_uri", "batch_size", "use_gpu")  # where the model is and how it is batched change no row
    if not issubclass(actor, Scorer):
        unused += ("views", "seed", "temperature", "ecle_batch_size", "ecle_repeats")  # the clean view only
    for k in unused:
        params.pop(k)
    d = cfg.data
    return {
        "actor": actor.__name__,
        "model": digest_bytes(storage.read_bytes(model_uri)),
        **digests,
        "scoring": params,
        "reading": {
            "max_pixels": d.max_pixels,
            "id_column": d.id_column,
            "image_column": d.image_column,
            "label_column": d.label_column,
        },
    }


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def _shard_dirs(out: ShardedOutput) -> pa.Array:
    names = storage.list_dirs(out.root)
    return pa.array(
        [n[len(out.SHARD_PREFIX) :] for n in names if n.startswith(out.SHARD_PREFIX)], pa.string()
    )


def _delete_shards(out: ShardedOutput, sids: list[str]) -> None:
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda sid: storage.delete(out.shard_dir(sid)), sids))


def _clear(out: ShardedOutput) -> None:
    """Remove every row of the output (shards, markers, summary); files beside them (the bank) stay."""
    _delete_shards(out, _shard_dirs(out).to_pylist())
    storage.delete(out.markers_dir)
    storage.delete(out.summary)


def _prepare(
    out: ShardedOutput, units: pa.Table, params: dict[str, Any]
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """The markers of finished shards that are still planned (their rows are kept) and of finished shards no
    longer planned (the *old* shards: their unchanged rows may be carried over into changed shards, see
    :mod:`mak_ray.score.carry`; :func:`_remove_old` removes them once the run is complete). Removes now the
    unmarked output of shards not planned, the partial output of unfinished planned ones, and everything when
    the params of the output differ from ``params``. Returns the kept markers, the old ones and the shard
    counts (reused, removed)."""
    if storage.exists(out.params):
        old = storage.read_json(out.params)
        if old != params:
            log.warning(
                "%s: the output was made with other params (%s): scoring every shard afresh",
                out.root,
                ", ".join(_changed(old, params)),
            )
            _clear(out)
    elif storage.exists(out.root):
        _clear(out)  # an output without params: its rows cannot be trusted
    storage.write_json(out.params, params)
    done = markers.read_markers(out)
    present = _shard_dirs(out)
    planned = units.column("shard")
    in_plan = pc.is_in(done["shard"], value_set=planned)
    keep, old = done.filter(in_plan), done.filter(pc.invert(in_plan))
    unmarked = pc.filter(present, pc.invert(pc.is_in(present, value_set=done.column("shard"))))
    stale = pc.filter(unmarked, pc.invert(pc.is_in(unmarked, value_set=planned)))
    if len(stale):
        log.info(
            "%s: removing the unfinished output of %d shards no longer in the input", out.root, len(stale)
        )
        _delete_shards(out, stale.to_pylist())
    if not old.num_rows and (done.num_rows != keep.num_rows or done.num_rows > markers.BATCH_SHARDS):
        markers.rewrite(out, keep)
    partial = pc.filter(unmarked, pc.is_in(unmarked, value_set=planned))
    if len(partial):
        log.info("%s: removing the partial output of %d interrupted shards", out.root, len(partial))
        _delete_shards(out, partial.to_pylist())
    return keep, old, {"reused": keep.num_rows, "removed": old.num_rows + len(stale)}


def _remove_old(out: ShardedOutput, old: pa.Table, planned: pa.ChunkedArray) -> None:
    """Drop the old shards once every planned shard is marked: their markers first (so an interrupted removal
    leaves only unmarked folders, which the next run removes), then their rows."""
    if not old.num_rows:
        return
    log.info("%s: %d shards are no longer in the input: removing their output", out.root, old.num_rows)
    current = markers.read_markers(out)
    markers.rewrite(out, current.filter(pc.is_in(current["shard"], value_set=planned)))
    _delete_shards(out, old.column("shard").to_pylist())


def shard_delta(plan: Plan, out: ShardedOutput) -> dict[str, int | None]:
    """What a scoring run of ``plan`` into ``out`` would do at shard level, from the shard index, the markers
    and the output's folder names only (no image is read): shards ``done`` (finished and still planned),
    ``to_add`` (planned, not finished) and ``to_remove`` (in the output, not planned), with ``rows_to_add``
    (None while a tar shard's count is unknown) and ``rows_to_remove`` (rows of the finished ones: the
    unchanged objects among them are carried over into the shards to add, not scored again). It assumes the
    params match; when they do not (see ``params.json``), every planned shard is to add."""
    index = plan.shard_table()
    planned = index.column("shard")
    marked = markers.read_markers(out)
    done = marked.column("shard")
    present = _shard_dirs(out) if storage.exists(out.root) else pa.array([], pa.string())
    kept = pc.sum(pc.is_in(done, value_set=planned).cast(pa.int64())).as_py() or 0
    extra = pc.unique(pa.concat_arrays([done.combine_chunks().cast(pa.string()), present]))
    removed = pc.sum(pc.invert(pc.is_in(extra, value_set=planned)).cast(pa.int64())).as_py() or 0
    add_rows = index.filter(pc.invert(pc.is_in(planned, value_set=done))).column("rows")
    old_rows = marked.filter(pc.invert(pc.is_in(done, value_set=planned))).column("rows")
    return {
        "done": int(kept),
        "to_add": len(planned) - int(kept),
        "to_remove": int(removed),
        "rows_to_add": None if add_rows.null_count else int(pc.sum(add_rows).as_py() or 0),
        "rows_to_remove": int(pc.sum(old_rows).as_py() or 0),
    }


# ------------------------------------------------------------------------------------------- engine


class _Progress:
    """Sums of the shards in flight, batched markers when they complete, running totals, and a periodic
    rate/ETA log line."""

    def __init__(self, out: ShardedOutput, todo: pa.Table, log_every_s: float, what: str) -> None:
        self.out, self.what, self.log_every_s = out, what, log_every_s
        rows = todo.column("rows")
        self.shards = todo.num_rows
        self.known_rows = int(pc.sum(rows).as_py() or 0)
        self.unknown = rows.null_count  # shards whose size is learnt when they finish (tar)
        self.markers = markers.MarkerWriter(out)
        self.rows: collections.Counter = collections.Counter()  # in flight
        self.failed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.total: dict[str, int] = {}
        self.carried: dict[str, int] = {}  # in flight: rows carried over, besides those the read yields
        self.bounds: dict[str, tuple[str, str]] = {}  # in flight: smallest and largest id seen
        self.finished: set[str] = set()
        self.done_rows = 0
        self.finished_unknown_rows = 0
        self.finished_unknown = 0
        self.inputs = self.scored = self.carried_rows = 0
        self.by_reason: collections.Counter = collections.Counter()
        self.actor_rss = 0
        self.first_ready = float("inf")  # epoch seconds when the first actor had its model loaded
        self.start = self.last_log = time.monotonic()

    def _span(self, sid: str, first: str | None, last: str | None) -> None:
        if first is None or last is None:
            return
        lo, hi = self.bounds.get(sid, (first, last))
        self.bounds[sid] = (min(lo, first), max(hi, last))

    def carry(self, sid: str, n: int, failed: dict, first: str, last: str, rest: int) -> None:
        """``n`` rows of shard ``sid`` carried over from the earlier output; ``rest`` rows are left to score
        (the shard is finished now when none is)."""
        self.rows[sid] += n
        self.failed[sid].update(failed)
        self.carried_rows += n
        self._span(sid, first, last)
        if rest:
            self.carried[sid] = n
        else:
            self.finish(sid, n)

    def add(
        self,
        sid: str,
        n: int,
        failed: dict,
        total: int,
        rss: int,
        ready_at: float = 0.0,
        first: str | None = None,
        last: str | None = None,
    ) -> None:
        self.rows[sid] += n
        self.done_rows += n
        self.failed[sid].update(failed)
        self._span(sid, first, last)
        self.actor_rss = max(self.actor_rss, rss)
        if ready_at > 0:
            self.first_ready = min(self.first_ready, ready_at)
        if total:
            self.total[sid] = total + self.carried.get(sid, 0)
        if sid in self.total and self.rows[sid] > self.total[sid]:
            raise RuntimeError(f"shard {sid}: {self.rows[sid]} rows written but it has {self.total[sid]}")
        if self.total.get(sid) == self.rows[sid]:
            self.finish(sid)
        now = time.monotonic()
        if now - self.last_log >= self.log_every_s:
            self.last_log = now
            self.log_line(now)

    def finish(self, sid: str, known: int | None = None) -> None:
        if sid in self.finished:
            return
        rows = int(self.rows.pop(sid, 0))
        failed = dict(self.failed.pop(sid, {}))
        self.total.pop(sid, None)
        self.carried.pop(sid, None)
        first, last = self.bounds.pop(sid, (None, None))
        scored = rows - sum(failed.values())
        self.markers.add(sid, rows, scored, failed, first, last)
        self.finished.add(sid)
        self.inputs += rows
        self.scored += scored
        self.by_reason.update(failed)
        if known is None:
            self.finished_unknown += 1
            self.finished_unknown_rows += rows

    def log_line(self, now: float) -> None:
        rate = self.done_rows / max(now - self.start, 1e-9)
        est = float(self.known_rows)
        if self.unknown:
            mean = self.finished_unknown_rows / self.finished_unknown if self.finished_unknown else None
            est = est + self.unknown * mean if mean is not None else float("nan")
        eta = (est - self.done_rows) / rate if rate > 0 and np.isfinite(est) else float("nan")
        eta_txt = f"{eta:.0f}s" if np.isfinite(eta) else "?"
        log.info(
            "%s: %d images (%d/%d shards), %.1f images/s, ETA %s",
            self.what,
            self.done_rows,
            len(self.finished),
            self.shards,
            rate,
            eta_txt,
        )


def _run(
    cfg: MakConfig,
    plan: Plan,
    actor: type[ModelActor],
    ctor: dict,
    out: ShardedOutput,
    params: dict[str, Any],
) -> dict:
    """Read the planned shards not finished with these ``params`` through ``actor`` actors (constructed with
    ``ctor`` plus where to write), after carrying the unchanged rows of old shards into them; mark each shard
    when its rows are all written, remove the old shards, and write the summary."""
    t0, wall0 = time.monotonic(), time.time()
    units = plan.shard_table()
    kept, old, delta = _prepare(out, units, params)
    phases = {"prepare": time.monotonic() - t0}
    todo = units.filter(pc.invert(pc.is_in(units["shard"], value_set=kept.column("shard"))))
    what = f"{actor.__name__.lower()} {out.root}"
    progress = _Progress(out, todo, cfg.score.log_every_s, what)
    residual = residual_dir(plan.manifest, out)
    t = time.monotonic()
    carried = carry_over(out, todo, plan.part_uris, old, residual)
    phases["carry"] = time.monotonic() - t
    for sid, n, failed, first, last, rest in zip(
        *(carried.records[c].to_pylist() for c in RECORD_SCHEMA.names)
    ):
        progress.carry(sid, n, json.loads(failed), first, last, rest)
    # what is left to read: the shards nothing was carried into, and the residual shards of the others
    parts = plan.part_uris + carried.parts
    shifted = pc.add(carried.units["part"], pa.scalar(len(plan.part_uris), pa.int32()))
    reads = pa.concat_tables(
        [
            todo.filter(pc.invert(pc.is_in(todo["shard"], value_set=carried.records["shard"]))),
            carried.units.set_column(carried.units.schema.get_field_index("part"), "part", shifted),
        ]
    )
    log.info(
        "%s: %d shards: %d reused, %d to score (%d rows carried over into %d of them), %d removed",
        what,
        units.num_rows,
        delta["reused"],
        todo.num_rows,
        carried.rows,
        carried.records.num_rows,
        delta["removed"],
    )
    t, launch = time.monotonic(), time.time()
    if reads.num_rows:
        ctor = {**ctor, "write": {"out_uri": out.root}}
        owners = cross_shard_owners(units, plan.part_uris, cfg.data)  # all shards: reruns fail the same rows
        blocks = read_blocks(reads, cfg.data.files_per_shard)  # small (residual) shards share read tasks
        ds = image_dataset(blocks, parts, cfg.data, owners=owners)
        records = map_actors(ds, cfg, actor, ctor, shards=len(blocks))
        for batch in records.iter_batches(batch_size=None, batch_format="numpy"):
            for sid, n, failed, total, rss, ready, first, last in zip(*(batch[c] for c in RECORD_COLUMNS)):
                progress.add(
                    str(sid), int(n), json.loads(failed), int(total), int(rss), float(ready), first, last
                )
        # The stream ended without error, so every row of every shard has been written: mark the rest
        # (shards whose last row was not seen in a record of their own, and empty shards).
        for sid, known in zip(reads.column("shard").to_pylist(), reads.column("rows").to_pylist()):
            if sid in progress.finished:
                continue
            if sid in progress.total and progress.total[sid] != progress.rows[sid]:
                raise RuntimeError(
                    f"shard {sid}: {progress.rows[sid]} rows written, {progress.total[sid]} read"
                )
            progress.finish(sid, known)
    phases["read_score"] = time.monotonic() - t
    if np.isfinite(progress.first_ready):
        phases["actor_start"] = progress.first_ready - launch
    t = time.monotonic()
    progress.markers.flush()
    if todo.num_rows:
        progress.log_line(time.monotonic())
    _remove_old(out, old, units.column("shard"))
    storage.delete(residual)
    phases["finish"] = time.monotonic() - t
    inputs, scored, by_reason = markers.totals(kept)
    reused_rows = inputs
    inputs, scored = inputs + progress.inputs, scored + progress.scored
    by_reason.update(progress.by_reason)
    seconds = time.monotonic() - t0
    startup = progress.first_ready - wall0 if np.isfinite(progress.first_ready) else None
    summary = {
        "inputs": inputs,
        "scored": scored,
        "failed": sum(by_reason.values()),
        "failed_by_reason": dict(sorted(by_reason.items())),
        "skipped": sum(plan.skipped.values()),
        "skipped_by_reason": dict(plan.skipped),
        "shards": units.num_rows,
        "shards_reused": delta["reused"],
        "shards_added": todo.num_rows,
        "shards_removed": delta["removed"],
        "plan": {
            "digest": plan.digest,
            "reused": plan.reused,
            "manifest": plan.manifest,
            "seconds": plan.seconds,
        },
        "rows_reused": reused_rows + progress.carried_rows,
        "rows_carried": progress.carried_rows,
        "rows_this_run": progress.inputs - progress.carried_rows,
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
    }
    return _summarise(out, summary, seconds, progress.actor_rss, startup)


def _summarise(
    out: ShardedOutput,
    summary: dict[str, Any],
    seconds: float,
    actor_rss: int,
    startup_seconds: float | None = None,
) -> dict:
    """``images_per_s`` is end to end (this run's rows over all of ``seconds``). ``startup_seconds``: from the
    start of the run until the first scoring actor had its model loaded (worker start, imports, model load);
    ``steady_images_per_s`` counts the rows over the rest of the run only. ``phase_seconds``: preparing the
    output (markers, removals), the carry-over, reading and scoring (``actor_start`` of it: from the actor
    pool's launch until its first actor had its model loaded, absent when nothing was read) and the finish
    (markers, removing the old shards)."""
    inputs, scored, failed = summary["inputs"], summary["scored"], summary["failed"]
    if inputs != scored + failed:
        raise RuntimeError(
            f"accounting mismatch in {out.root}: inputs {inputs} != scored {scored} + failed {failed}"
        )
    n = summary["rows_this_run"]
    summary.update(
        {
            "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 2) if seconds > 0 else None,
            "startup_seconds": None if startup_seconds is None else round(startup_seconds, 3),
            "steady_images_per_s": (
                round(n / (seconds - startup_seconds), 2)
                if startup_seconds is not None and seconds > startup_seconds
                else None
            ),
            "driver_max_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "actor_max_rss_bytes": actor_rss,
        }
    )
    storage.write_json(out.summary, summary)
    log.info(
        "%s: %d inputs = %d scored + %d failed %s; %d skipped %s; shards: %d reused, %d scored, %d removed; "
        "rows: %d reused (%d of them carried over into changed shards), %d read and scored",
        out.root,
        inputs,
        scored,
        failed,
        summary["failed_by_reason"],
        summary["skipped"],
        summary["skipped_by_reason"],
        summary["shards_reused"],
        summary["shards_added"],
        summary["shards_removed"],
        summary["rows_reused"],
        summary["rows_carried"],
        summary["rows_this_run"],
    )
    return summary


# ------------------------------------------------------------------------------------------- entry points


def score_pool(
    cfg: MakConfig,
    model_uri: str,
    centroids: np.ndarray,
    out: ShardedOutput,
    bank_uri: str,
    plan_dir: str | None = None,
    *,
    targets: np.ndarray,
) -> dict:
    """Score ``cfg.data.pool`` into ``out`` (ECLE, proximity to ``centroids``, distance to the nearest of the
    target embeddings ``targets``, embeddings); resumable and
    incremental. The negative bank is read from ``bank_uri`` while it belongs to this model (see
    :mod:`mak_ray.score.bank`), or drawn and written there first."""
    import ray

    from mak_ray.score.bank import load_or_compute_bank

    plan = plan_for(cfg, cfg.data.pool, plan_dir)
    bank = load_or_compute_bank(cfg, model_uri, plan, bank_uri, out.file("bank.json"))
    ctor = {
        "params": asdict(ScorerParams.from_config(cfg, model_uri)),
        "bank": ray.put(np.ascontiguousarray(bank, dtype=np.float32)),
        "centroids": ray.put(np.ascontiguousarray(centroids, dtype=np.float32)),
        "targets": ray.put(np.ascontiguousarray(targets, dtype=np.float32)),
    }
    params = output_params(
        cfg,
        Scorer,
        model_uri,
        bank=digest_array(bank),
        centroids=digest_array(centroids),
        targets=digest_array(targets),
    )
    return _run(cfg, plan, Scorer, ctor, out, params)


def embed_images(
    input_uri: str, cfg: MakConfig, model_uri: str, out: ShardedOutput, plan_dir: str | None = None
) -> dict:
    """Clean-view backbone embeddings of every image under ``input_uri`` into ``out``; resumable."""
    plan = plan_for(cfg, input_uri, plan_dir)
    params = output_params(cfg, Embedder, model_uri)
    return _run(
        cfg, plan, Embedder, {"params": asdict(ScorerParams.from_config(cfg, model_uri))}, out, params
    )
