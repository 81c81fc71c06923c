"""The plan of an input as data: a Parquet manifest made by parallel listing tasks, reused while the input
is unchanged.

``plan_input(uri, data, plan_dir)`` lists the input in Ray tasks (:mod:`mak_ray.data.listing`; in this process
when Ray is not running), each writing one manifest part, and keeps under ``plan_dir``::

    plan.json                      the input, the planning settings, counts, skipped entries by reason, the
                                   listing digest, the manifest folder and its part files
    manifest-<token>/part-*.parquet   one row per input object (id, kind, size, version, label, error, shard,
                                   row_groups, rows), each shard's rows contiguous in one part
    manifest-<token>/shards.parquet   the shard index: shard id, kind, part, row range, known rows

The driver holds counts, the part list and (for the engine) the shard index, never the objects. Read tasks
take a shard's row range and read its members from the part themselves.

The digest covers the input root, the planning settings and every listed entry's name, size and version
(mtime or ETag), so a rerun over an unchanged input keeps the manifest and says so; any change (an object
added, removed or rewritten, a skip pattern changed) makes a new one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mak_ray import storage
from mak_ray.config import DataSection, MakConfig
from mak_ray.data import listing, names
from mak_ray.data.listing import SHARD_SCHEMA, ListSpec, LocalDir, S3Range
from mak_ray.layout import PlanFolder, RunLayout

log = logging.getLogger(__name__)

SHARDS_FILE = "shards.parquet"
LIST_CPUS = 0.25  # listing waits on the file system or the object store more than it computes
INLINE_SECONDS = 1.0  # a listing runs in this process until it has taken this long, then in Ray tasks
MAX_IN_FLIGHT = 64
DIRS_PER_TASK = 16
RANGES_PER_TASK = 8
SCHEME = 1  # bump when the manifest's rows or shard cutting change meaning


@dataclass
class Plan:
    """One planned input (see the module docstring); small: counts and file names only."""

    uri: str
    root: str  # plan_dir
    manifest: str  # folder of the parts and the shard index
    parts: list[str]
    format: str  # images | tar | parquet | images+tar
    objects: int  # manifest rows (row-group shards of one Parquet file count once each)
    listed: int  # entries seen: objects + skipped
    shards: int
    known_rows: int  # rows of the shards whose row count is known without reading them
    unknown_shards: int  # shards whose row count is known only once read (tar)
    skipped: dict[str, int]
    kinds: dict[str, int]
    digest: str
    settings: dict[str, Any]
    seconds: float = 0.0
    reused: bool = False
    created: float = field(default_factory=time.time)
    index: pa.Table | None = field(default=None, repr=False)  # the shard index of a survey (nothing written)

    @property
    def part_uris(self) -> list[str]:
        return [storage.join(self.manifest, p) for p in self.parts]

    @property
    def shard_index(self) -> str:
        return storage.join(self.manifest, SHARDS_FILE)

    def shard_table(self) -> pa.Table:
        """The shard index (id, kind, part, start, stop, rows), sorted by shard id."""
        return self.index if self.index is not None else storage.read_parquet(self.shard_index)

    @property
    def input_rows(self) -> int | None:
        """Rows the input yields, when known without reading it (None with tar shards)."""
        return None if self.unknown_shards else self.known_rows

    def to_json(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("reused", "index")
        }
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


INPUTS = ("pool", "target", "eval_train", "eval_test")


def input_name(data: DataSection, uri: str) -> str:
    """The name of ``uri``'s plan folder: the ``data`` field that holds it, else ``input-<hash of the URI>``."""
    for name in INPUTS:
        value = getattr(data, name)
        if value and value.rstrip("/") == uri.rstrip("/"):
            return name
    return "input-" + hashlib.sha1(uri.encode()).hexdigest()[:12]


def settings_of(data: DataSection) -> dict[str, Any]:
    """The planning settings: a change to any of them makes a new manifest."""
    return {
        "format": data.format,
        "files_per_shard": data.files_per_shard,
        "labels_from_parent": data.labels_from_parent,
        "skip": list(data.skip),
        "follow_symlinks": data.follow_symlinks,
        "parquet_rows_per_shard": data.parquet_rows_per_shard,
        "scheme": SCHEME,
    }


def _spec(uri: str, data: DataSection, staging: str, footers: bool = True) -> ListSpec:
    return ListSpec(
        root=uri,
        fmt=data.format,
        files_per_shard=data.files_per_shard,
        labels_from_parent=data.labels_from_parent,
        skip=tuple(data.skip),
        follow_symlinks=data.follow_symlinks,
        parquet_rows_per_shard=data.parquet_rows_per_shard,
        staging=staging,
        footers=footers,
        page_keys=listing.PAGE_KEYS,
        pages_per_item=listing.PAGES_PER_ITEM,
    )


# ------------------------------------------------------------------------------------------- listing


class _Tasks:
    """Runs listing calls in this process for the first ``INLINE_SECONDS`` (a small input never waits for
    worker processes), then as Ray tasks when Ray is up."""

    def __init__(self) -> None:
        import ray

        self.ray = ray if ray.is_initialized() else None
        self.remote: dict[Any, Any] = {}
        self.inline_until = time.monotonic() + INLINE_SECONDS
        self.done: deque = deque()
        self.pending: list = []

    def submit(self, fn, *args) -> None:
        if self.ray is None or time.monotonic() < self.inline_until:
            self.done.append(fn(*args))
            return
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(fn).options(num_cpus=LIST_CPUS)
        self.pending.append(self.remote[fn].remote(*args))

    def busy(self) -> bool:
        return bool(self.done or self.pending)

    def next(self) -> dict[str, Any]:
        if self.done:
            return self.done.popleft()
        ready, self.pending = self.ray.wait(self.pending, num_returns=1)
        return self.ray.get(ready[0])


@dataclass
class _Listing:
    """What the driver keeps of a listing: counts and the shard index, never the rows."""

    parts: dict[int, str] = field(default_factory=dict)
    shard_tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    listed: int = 0
    digest: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    kinds: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, res: dict[str, Any]) -> None:
        if res["name"]:
            self.parts[res["part"]] = res["name"]
        if res["shards"].num_rows:
            self.shard_tables.append(res["shards"])
        self.rows += res["rows"]
        self.listed += res["listed"]
        self.digest = (self.digest + res["digest"]) % (1 << 128)
        self.skipped.update(res["skipped"])
        self.kinds.update(res["kinds"])
        for k, ex in res["examples"].items():
            self.examples[k] = (self.examples[k] + ex)[:3]


def _walk(spec: ListSpec) -> _Listing:
    """List ``spec.root`` with listing tasks, handing found folders and range rests to further tasks."""
    tasks = _Tasks()
    out = _Listing()
    part = 0
    queue: deque = deque()
    visited: set[tuple[int, int]] = set()

    def submit(fn, *args) -> None:
        nonlocal part
        tasks.submit(fn, spec, part, *args)
        part += 1

    if spec.is_s3:
        bucket, prefix = listing._root_prefix(spec)
        head = s3_head(bucket, prefix.rstrip("/")) if prefix else None
        if head is not None:
            submit(listing.list_s3_object, bucket, prefix.rstrip("/"), *head)
        else:
            queue.append(S3Range(bucket, prefix))
        per_task = RANGES_PER_TASK
        fn = listing.list_s3
    else:
        root = os.fsencode(storage.filesystem(spec.root)[1])
        st = os.stat(root)  # FileNotFoundError for a missing input
        if not os.path.isdir(root):
            submit(listing.list_local_file, root)
        else:
            visited.add((st.st_dev, st.st_ino))
            queue.append(LocalDir(root, b"", (st.st_dev, st.st_ino)))
        per_task = DIRS_PER_TASK
        fn = listing.list_local
    while queue or tasks.busy():
        while queue and len(tasks.pending) < MAX_IN_FLIGHT:
            n = max(1, min(per_task, len(queue) // max(1, MAX_IN_FLIGHT // 4)))
            submit(fn, [queue.popleft() for _ in range(min(n, len(queue)))])
        res = tasks.next()
        out.add(res)
        for child in res["children"]:
            if isinstance(child, LocalDir):
                if child.key in visited:
                    out.skipped["visited"] += 1
                    out.listed += 1
                    continue
                visited.add(child.key)
            queue.append(child)
    if spec.is_s3 and out.listed == 0 and not _s3_prefix_exists(spec):
        raise FileNotFoundError(f"no such file or prefix: {spec.root}")
    return out


def s3_head(bucket: str, key: str) -> tuple[int, str] | None:
    """(size, ETag) of the object ``key``, or None when there is none."""
    client = storage.s3_client()
    try:
        h = storage.with_retries(
            f"s3://{bucket}/{key}", "stat", lambda: client.head_object(Bucket=bucket, Key=key)
        )
    except Exception as exc:  # noqa: BLE001 - 404 means a prefix (or nothing), anything else is reported
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return None
        if code in ("NoSuchBucket",):
            raise FileNotFoundError(f"no such bucket: s3://{bucket}") from exc
        raise
    return int(h.get("ContentLength", 0)), str(h.get("ETag", "")).strip('"')


def _s3_prefix_exists(spec: ListSpec) -> bool:
    return storage.exists(spec.root)


def _resolve_format(spec: ListSpec, found: _Listing) -> str:
    kinds = {k for k, n in found.kinds.items() if n}
    if names.PARQUET in kinds and kinds - {names.PARQUET}:
        others = {k: found.examples.get(k, []) for k in sorted(kinds - {names.PARQUET})}
        raise ValueError(
            f"{spec.root} mixes Parquet files (e.g. {found.examples.get(names.PARQUET, [])}) with other inputs "
            f"({others}); Parquet pools cannot be mixed with image files or tar shards: keep them apart or set "
            "data.format"
        )
    if not kinds:
        raise ValueError(
            f"no {spec.fmt if spec.fmt != 'auto' else 'image, tar or Parquet'} inputs found under {spec.root} "
            f"(skipped: {dict(found.skipped)})"
        )
    if kinds == {names.FILES}:
        return "images"
    if kinds == {names.TAR}:
        return "tar"
    if kinds == {names.PARQUET}:
        return "parquet"
    return "images+tar"


def _digest(root: str, settings: dict[str, Any], found: _Listing) -> str:
    text = json.dumps({"root": names.root_id(root), "settings": settings}, sort_keys=True)
    text += f"|{found.listed}|{found.digest:032x}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_plan(plan_dir: str) -> Plan | None:
    """The plan kept under ``plan_dir``, or None."""
    uri = PlanFolder(plan_dir).plan
    if not storage.exists(uri):
        return None
    return Plan.from_json(storage.read_json(uri))


def _shard_index(found: _Listing) -> tuple[list[str], pa.Table]:
    """Part names in part order and the shard index sorted by shard id, parts renumbered to that list."""
    order = sorted(found.parts)
    renumber = {p: i for i, p in enumerate(order)}
    table = pa.concat_tables(found.shard_tables) if found.shard_tables else SHARD_SCHEMA.empty_table()
    new_part = np.array([renumber.get(p, -1) for p in table.column("part").to_pylist()], dtype=np.int32)
    table = table.set_column(table.schema.get_field_index("part"), "part", pa.array(new_part, pa.int32()))
    table = table.sort_by("shard")
    sids = table.column("shard")
    if len(sids) > 1 and pc.any(pc.equal(sids.slice(1), sids.slice(0, len(sids) - 1))).as_py():
        raise RuntimeError("two shards of the plan have one id: the listing read an object twice")
    return [found.parts[p] for p in order], table


def plan_input(uri: str, data: DataSection, plan_dir: str) -> Plan:
    """List ``uri`` and keep its manifest under ``plan_dir`` (reused when the listing digest is unchanged).

    Raises FileNotFoundError when ``uri`` does not exist and ValueError when it holds no input or mixes
    Parquet with other inputs, before any image is read.
    """
    t0 = time.perf_counter()
    settings = settings_of(data)
    folder = PlanFolder(plan_dir)
    staging = folder.manifest(f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    spec = _spec(uri, data, staging)
    try:
        found = _walk(spec)
        digest = _digest(uri, settings, found)
        old = read_plan(plan_dir)
        if old is not None and old.digest == digest and storage.exists(old.shard_index):
            storage.delete(staging)
            old.reused = True
            log.info(
                "%s: input unchanged (%d objects, %d skipped, digest %s): reusing the plan in %s (listed in %.1f s)",
                uri,
                old.objects,
                sum(old.skipped.values()),
                digest[:12],
                plan_dir,
                time.perf_counter() - t0,
            )
            return old
        fmt = _resolve_format(spec, found)
        parts, shards = _shard_index(found)
        storage.write_parquet(shards, storage.join(staging, SHARDS_FILE))
    except BaseException:
        storage.delete(staging)
        raise
    plan = _plan_of(
        uri, fmt, found, shards, digest, settings, t0, root=plan_dir, manifest=staging, parts=parts
    )
    storage.write_json(folder.plan, plan.to_json())
    for name in storage.list_dirs(plan_dir):
        if (
            name.startswith(folder.MANIFEST_PREFIX)
            and folder.manifest(name[len(folder.MANIFEST_PREFIX) :]) != staging
        ):
            storage.delete(folder.manifest(name[len(folder.MANIFEST_PREFIX) :]))
    log.info(
        "%s: %d %s inputs in %d shards, %d skipped %s; manifest %s (%d parts, listed in %.1f s)%s",
        uri,
        plan.objects,
        fmt,
        plan.shards,
        sum(plan.skipped.values()),
        plan.skipped,
        staging,
        len(parts),
        plan.seconds,
        "" if old is None else f"; the input changed since {old.digest[:12]}",
    )
    return plan


def plan_for(cfg: MakConfig, uri: str, plan_dir: str | None = None) -> Plan:
    """The plan of ``uri`` (one of ``cfg.data``'s inputs) under the run's ``plan/<input>/``."""
    return plan_input(
        uri, cfg.data, plan_dir or RunLayout(cfg.run.output_uri).plan(input_name(cfg.data, uri))
    )


def input_digest(uri: str, data: DataSection, plan_dir: str | None = None) -> str:
    """A digest of ``uri``'s listing and the planning settings: it changes when an object is added, removed or
    rewritten (size, mtime or ETag), or a setting that changes the plan does. The input is listed (in
    parallel Ray tasks when Ray is up), never read; with ``plan_dir`` the manifest there is refreshed too
    (or kept, when unchanged), so the stage that reads the input next finds it current."""
    if plan_dir is not None:
        return plan_input(uri, data, plan_dir).digest
    return _digest(uri, settings_of(data), _walk(_spec(uri, data, "", footers=False)))


def survey_input(uri: str, data: DataSection) -> Plan:
    """The plan ``plan_input`` would make (counts, format, shard index, digest), listed but written nowhere:
    for ``mak-ray status`` and ``--dry-run``. Its shard index is held in memory (a few dozen bytes per shard)."""
    t0 = time.perf_counter()
    spec = _spec(uri, data, "")
    found = _walk(spec)
    fmt = _resolve_format(spec, found)
    _, shards = _shard_index(found)
    settings = settings_of(data)
    return _plan_of(uri, fmt, found, shards, _digest(uri, settings, found), settings, t0, index=shards)


def _plan_of(
    uri: str,
    fmt: str,
    found: _Listing,
    shards: pa.Table,
    digest: str,
    settings: dict[str, Any],
    t0: float,
    **where: Any,
) -> Plan:
    """The plan's counts from a listing and its shard index; ``where``: its folder, manifest and parts (or,
    for a survey, the index held in memory)."""
    rows = shards.column("rows")
    return Plan(
        uri=uri,
        **{"root": "", "manifest": "", "parts": [], **where},
        format=fmt,
        objects=found.rows,
        listed=found.listed,
        shards=shards.num_rows,
        known_rows=int(pc.sum(rows).as_py() or 0),
        unknown_shards=rows.null_count,
        skipped=dict(sorted(found.skipped.items())),
        kinds=dict(sorted(found.kinds.items())),
        digest=digest,
        settings=settings,
        seconds=round(time.perf_counter() - t0, 3),
    )


# ------------------------------------------------------------------------------------------- reading


def read_rows(part_uri: str, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows ``[start, stop)`` of one manifest part, reading only the row groups that hold them."""
    fs, path = storage.filesystem(part_uri)

    def read() -> pa.Table:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            groups, first, offset = [], None, 0
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                if offset + n > start and offset < stop:
                    groups.append(g)
                    first = offset if first is None else first
                offset += n
            if not groups:
                return (
                    pf.schema_arrow.empty_table().select(columns)
                    if columns
                    else pf.schema_arrow.empty_table()
                )
            t = pf.read_row_groups(groups, columns=columns)
        return t.slice(start - first, stop - start)

    return storage.with_retries(part_uri, "read", read)


def _take_from_part(part_uri: str, rows: np.ndarray) -> pa.Table:
    """Rows at positions ``rows`` of one manifest part (in that order), reading only their row groups."""
    fs, path = storage.filesystem(part_uri)

    def read() -> pa.Table:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            ends = np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])
            groups = np.searchsorted(ends, rows, side="right")
            tables, where = [], np.empty(len(rows), dtype=np.int64)
            offset = 0
            for g in np.unique(groups):
                sel = np.flatnonzero(groups == g)
                start = int(ends[g - 1]) if g else 0
                t = pf.read_row_group(int(g)).take(pa.array(rows[sel] - start))
                tables.append(t)
                where[sel] = offset + np.arange(len(sel))
                offset += len(sel)
            return pa.concat_tables(tables).take(pa.array(where))

    return storage.with_retries(part_uri, "read", read)


def take_rows(plan: Plan, shard_table: pa.Table, index: np.ndarray) -> pa.Table:
    """Manifest rows at positions ``index`` of the plan's row order (shards in id order, rows in shard order),
    in the order of ``index``; only the row groups that hold them are read."""
    import concurrent.futures as cf

    index = np.asarray(index, dtype=np.int64)
    if len(index) == 0:
        return listing.MANIFEST_SCHEMA.empty_table()
    starts = shard_table.column("start").to_numpy()
    sizes = (shard_table.column("stop").to_numpy() - starts).astype(np.int64)
    ends = np.cumsum(sizes)
    s = np.searchsorted(ends, index, side="right")
    part = shard_table.column("part").to_numpy()[s]
    row = starts[s] + index - (ends[s] - sizes[s])
    uris = plan.part_uris
    by_part = [(int(p), np.flatnonzero(part == p)) for p in np.unique(part)]
    with cf.ThreadPoolExecutor(16) as pool:
        tables = list(pool.map(lambda pe: _take_from_part(uris[pe[0]], row[pe[1]]), by_part))
    where = np.empty(len(index), dtype=np.int64)
    offset = 0
    for _, sel in by_part:
        where[sel] = offset + np.arange(len(sel))
        offset += len(sel)
    return pa.concat_tables(tables).take(pa.array(where))
