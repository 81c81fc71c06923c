"""Listing an input in parallel tasks that write the manifest themselves: local folders and S3 prefixes.

A listing task gets a few *items* (a local folder, or an S3 folder prefix with a key range), lists them, cuts
what it found into shards, writes one manifest part (Parquet, one row per input object) and returns only
small things: the part's shard index, counts, skip reasons, a digest of what it saw, and the items it found
but did not list (sub-folders, or the rest of a long S3 range). The driver (:mod:`mak_ray.data.manifest`)
hands those out to further tasks, so it never holds the objects.

**Shards do not depend on position.** Files of one folder (in byte order of their names) are cut where a
name's hash falls below ``2^64 / files_per_shard`` (a *boundary* name starts a shard), and after
``MAX_SHARD_FACTOR * files_per_shard`` files since the last boundary. A shard's id is
``<hex of its first name relative to the input, up to 32 bytes>-<hash of its members' names, sizes and
versions>``: adding or removing a file changes only the shard that holds it, and ids sort as the names do.
Each tar file is one shard, and each run of whole row groups of a Parquet file (about
``parquet_rows_per_shard`` rows, from its footer) one shard; their ids hash the file's name, size and version
(local: mtime; S3: ETag) and, for Parquet, the row groups.

**Flat S3 prefixes list in parallel.** A task lists at most ``PAGES_PER_ITEM`` pages of a range. When the
range is longer, it splits the rest ``(last key seen, end]`` at keys made from the characters it has seen
(at each position from the first that varied back to the folder prefix), so the next round lists the pieces
side by side. A task owns the shards whose first file lies in its range: it skips the files before the
first boundary name (the previous range's last shard) and, past its end, reads on to the next boundary to
finish its last shard. So a shard never depends on where the key space was split.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mak_ray import storage
from mak_ray.data import names
from mak_ray.data.names import FILES, PARQUET, SkipRules

log = logging.getLogger(__name__)

MAX_SHARD_FACTOR = 4  # a shard holds at most this many times files_per_shard files
ORDER_BYTES = 32  # of the first member's relative name, in the shard id (ids sort like names)
PAGE_KEYS = 1000  # keys per S3 LIST page (the most S3 returns)
PAGES_PER_ITEM = 10  # S3 LIST pages a task reads of one range before it splits the rest
MAX_SPLITS = 32  # pieces a long S3 range is split into per round
MAX_ALPHABET = 64
FOOTER_THREADS = 16  # Parquet footers are read while listing; object-store latency bounds it
PART_ROW_GROUP = 1024  # manifest rows per row group: a read task reads only the groups of its shard

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # the object's id (see mak_ray.data.names), for image files the row id
        ("kind", pa.string()),  # files | tar | parquet
        ("size", pa.int64()),
        ("version", pa.string()),  # local mtime_ns, S3 ETag
        ("label", pa.string()),  # parent folder name, for image files with labels_from_parent
        ("error", pa.string()),  # a failure found while listing (broken_link, not_a_regular_file, ...)
        ("shard", pa.string()),
        ("row_groups", pa.list_(pa.int32())),  # Parquet: the row groups of this shard (None: the whole file)
        ("rows", pa.int64()),  # Parquet: rows of this shard from the footer (None: footer unreadable)
    ]
)
SHARD_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("kind", pa.string()),
        ("part", pa.int32()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("rows", pa.int64()),  # rows the shard yields when known without reading it (None for tar)
    ]
)


@dataclass(frozen=True)
class ListSpec:
    """What every listing task needs to know about the input (picklable, small)."""

    root: str  # the input URI as configured
    fmt: str
    files_per_shard: int
    labels_from_parent: bool
    skip: tuple[str, ...]
    follow_symlinks: bool
    parquet_rows_per_shard: int
    staging: str  # folder the tasks write their manifest parts to ("": the rows are not kept)
    footers: bool = True  # read Parquet footers to cut big files by row group (a digest needs no footers)
    page_keys: int = PAGE_KEYS
    pages_per_item: int = PAGES_PER_ITEM

    @property
    def is_s3(self) -> bool:
        return storage.is_s3(self.root)


@dataclass(slots=True)
class Entry:
    rel: bytes  # name relative to the input root
    rid: str
    size: int
    version: str
    kind: str
    error: str | None = None
    label: str | None = None


def entry_hash(rel: bytes, size: int, version: str) -> int:
    """One listed entry's contribution to the listing digest (a sum mod 2^128: any task may list any part)."""
    h = hashlib.blake2b(rel + b"\0" + str(size).encode() + b"\0" + version.encode(), digest_size=16)
    return int.from_bytes(h.digest(), "big")


def is_boundary(rel: bytes, files_per_shard: int) -> bool:
    h = int.from_bytes(hashlib.blake2b(rel, digest_size=8).digest(), "big")
    return h < (1 << 64) // files_per_shard


def shard_id(first_rel: bytes, members: list[tuple[bytes, int, str, str | None]], extra: str = "") -> str:
    """``<hex of the first name, up to ORDER_BYTES>-<hash of every member's name, size, version, error>``."""
    text = b"\n".join(
        b"\0".join((rel, str(size).encode(), version.encode(), (err or "").encode()))
        for rel, size, version, err in members
    )
    h = hashlib.blake2b(extra.encode() + b"\n" + text + b"\n", digest_size=8)
    return f"{first_rel[:ORDER_BYTES].hex()}{extra}-{h.hexdigest()}"


# ------------------------------------------------------------------------------------------- one part


class PartBuilder:
    """The rows, shards and counts one listing task produces; written as one manifest part."""

    def __init__(self, spec: ListSpec, part: int) -> None:
        self.spec, self.part = spec, part
        self.cols: dict[str, list] = {f.name: [] for f in MANIFEST_SCHEMA}
        self.shards: dict[str, list] = {f.name: [] for f in SHARD_SCHEMA}
        self.digest = 0
        self.listed = 0
        self.skipped: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self.parquet: list[Entry] = []
        self.chunk: list[Entry] = []
        self.chunk_anchor = 0  # files since the last boundary name (forced cuts count from there)
        self.threshold_cut = MAX_SHARD_FACTOR * spec.files_per_shard
        # a local folder is always listed whole by one task, so its entries are hashed together (one hash per
        # folder); an S3 range may be split anywhere, so each key is hashed on its own
        self.per_entry = spec.is_s3
        self.seen_block: list[bytes] = []

    # -- accounting
    def seen(self, rel: bytes, size: int, version: str) -> None:
        self.listed += 1
        if self.per_entry:
            self.digest = (self.digest + entry_hash(rel, size, version)) % (1 << 128)
        else:
            self.seen_block.append(b"\0".join((rel, str(size).encode(), version.encode())))

    def _flush_seen(self) -> None:
        if self.seen_block:
            h = hashlib.blake2b(b"\n".join(self.seen_block), digest_size=16).digest()
            self.digest = (self.digest + int.from_bytes(h, "big")) % (1 << 128)
            self.seen_block = []

    def skip(self, reason: str, rel: bytes, size: int = 0, version: str = "") -> None:
        self.seen(rel, size, version)
        self.skipped[reason] += 1

    def _kind_seen(self, e: Entry) -> None:
        self.kinds[e.kind] += 1
        if len(self.examples[e.kind]) < 3:
            self.examples[e.kind].append(e.rid)

    # -- rows
    def _row(self, e: Entry, sid: str, row_groups: list[int] | None = None, rows: int | None = None) -> None:
        c = self.cols
        c["id"].append(e.rid)
        c["kind"].append(e.kind)
        c["size"].append(e.size)
        c["version"].append(e.version)
        c["label"].append(e.label)
        c["error"].append(e.error)
        c["shard"].append(sid)
        c["row_groups"].append(row_groups)
        c["rows"].append(rows)

    def _shard(self, sid: str, kind: str, start: int, rows: int | None) -> None:
        s = self.shards
        s["shard"].append(sid)
        s["kind"].append(kind)
        s["part"].append(self.part)
        s["start"].append(start)
        s["stop"].append(len(self.cols["id"]))
        s["rows"].append(rows)

    def file(self, e: Entry, natural: bool) -> None:
        """The next image file of a folder sequence: cut before it at a boundary name or a full shard."""
        self.seen(e.rel, e.size, e.version)
        self.kinds[FILES] += 1
        if len(self.examples[FILES]) < 3:
            self.examples[FILES].append(e.rid)
        if natural:
            self.close_chunk()
            self.chunk_anchor = 0
        elif self.chunk_anchor and self.chunk_anchor % self.threshold_cut == 0:
            self.close_chunk()
        self.chunk.append(e)
        self.chunk_anchor += 1

    def close_chunk(self) -> None:
        chunk = self.chunk
        if not chunk:
            return
        sid = shard_id(chunk[0].rel, [(e.rel, e.size, e.version, e.error) for e in chunk])
        start = len(self.cols["id"])
        n = len(chunk)
        c = self.cols
        c["id"].extend(e.rid for e in chunk)
        c["kind"].extend([FILES] * n)
        c["size"].extend(e.size for e in chunk)
        c["version"].extend(e.version for e in chunk)
        c["label"].extend(e.label for e in chunk)
        c["error"].extend(e.error for e in chunk)
        c["shard"].extend([sid] * n)
        c["row_groups"].extend([None] * n)
        c["rows"].extend([None] * n)
        self._shard(sid, FILES, start, n)
        self.chunk = []

    def end_sequence(self) -> None:
        """A folder's files end here (the next file starts a new shard whatever its name)."""
        self.close_chunk()
        self.chunk_anchor = 0
        self._flush_seen()

    def single(self, e: Entry) -> None:
        """A tar or Parquet file (Parquet is cut by row group once its footer is read, in :meth:`finish`)."""
        self.seen(e.rel, e.size, e.version)
        self._kind_seen(e)
        if e.kind == PARQUET and e.error is None:
            self.parquet.append(e)
            return
        sid = shard_id(e.rel, [(e.rel, e.size, e.version, e.error)], "")
        start = len(self.cols["id"])
        self._row(e, sid)
        self._shard(sid, e.kind, start, 1 if e.error else None)

    def _parquet_pieces(self) -> None:
        with cf.ThreadPoolExecutor(min(FOOTER_THREADS, max(1, len(self.parquet)))) as pool:
            runs = list(
                pool.map(lambda e: row_group_runs(e.rid, self.spec.parquet_rows_per_shard), self.parquet)
            )
        for e, file_runs in zip(self.parquet, runs):
            for groups, rows in file_runs:
                extra = "" if groups is None else f".{groups[0]:06d}"
                sid = shard_id(e.rel, [(e.rel, e.size, e.version, None)], extra)
                if groups is not None:
                    sid += f"{groups[-1]:06d}"
                start = len(self.cols["id"])
                self._row(e, sid, groups, rows)
                self._shard(sid, PARQUET, start, rows)
        self.parquet = []

    def finish(self) -> dict[str, Any]:
        """Write the part (when it holds rows) and return the task's result for the driver."""
        self.end_sequence()
        if self.parquet and self.spec.footers:
            self._parquet_pieces()
        n = len(self.cols["id"])
        name = None
        if n and self.spec.staging:
            name = f"part-{self.part:06d}.parquet"
            table = pa.table(self.cols, schema=MANIFEST_SCHEMA)
            storage.write_parquet(table, storage.join(self.spec.staging, name), row_group_size=PART_ROW_GROUP)
        return {
            "part": self.part,
            "name": name,
            "rows": n,
            "shards": pa.table(self.shards, schema=SHARD_SCHEMA),
            "listed": self.listed,
            "digest": self.digest,
            "skipped": dict(self.skipped),
            "kinds": dict(self.kinds),
            "examples": dict(self.examples),
        }


def row_group_runs(rid: str, rows_per_shard: int) -> list[tuple[list[int] | None, int | None]]:
    """Runs of consecutive row groups of about ``rows_per_shard`` rows, with their row counts; one run
    ``None`` (the whole file) when it is no bigger, has one row group, or its footer cannot be read (then its
    count is None too, and the reader reports the failure)."""
    import pyarrow.parquet as pq

    from mak_ray.data.readers import open_object

    try:
        with open_object(rid) as f:
            md = pq.ParquetFile(f).metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    except Exception as exc:  # noqa: BLE001
        log.debug("%s: footer not readable (%s); one shard", rid, type(exc).__name__)
        return [(None, None)]
    if len(sizes) <= 1 or sum(sizes) <= rows_per_shard:
        return [(None, sum(sizes))]
    runs: list[tuple[list[int] | None, int | None]] = []
    run: list[int] = []
    rows = 0
    for i, n in enumerate(sizes):
        run.append(i)
        rows += n
        if rows >= rows_per_shard:
            runs.append((run, rows))
            run, rows = [], 0
    if run:
        runs.append((run, rows))
    return runs


def _label(spec: ListSpec, rel: bytes) -> str | None:
    if not spec.labels_from_parent:
        return None
    parent = rel.rpartition(b"/")[0]
    return names.text(parent.rpartition(b"/")[2]) if parent else None


# ------------------------------------------------------------------------------------------- local


@dataclass
class LocalDir:
    path: bytes  # absolute
    rel: bytes  # relative to the input root ("" for the root)
    key: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the real folder


def _join_rel(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


def list_local(spec: ListSpec, part: int, dirs: list[LocalDir]) -> dict[str, Any]:
    """List each folder of ``dirs`` (not recursively) into one manifest part; sub-folders are returned."""
    from mak_ray.data.readers import read_error

    b = PartBuilder(spec, part)
    skip = SkipRules(spec.skip)
    children: list[LocalDir] = []
    fps = spec.files_per_shard
    for d in dirs:
        try:
            with os.scandir(d.path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            b.file(Entry(d.rel, names.local_id(d.path), 0, "", FILES, read_error(exc)), natural=True)
            b.end_sequence()
            continue
        dir_id = names.local_id(d.path)  # the folder's part of its files' ids, encoded once
        label = names.text(d.rel.rpartition(b"/")[2]) if spec.labels_from_parent and d.rel else None
        prefix = d.rel + b"/" if d.rel else b""
        for de in entries:
            name: bytes = de.name
            rel = prefix + name
            try:
                is_dir = de.is_dir(follow_symlinks=False)
                is_link = not is_dir and de.is_symlink()
            except OSError:
                is_dir = is_link = False
            if is_dir:
                reason = skip.reason(name, True)
                if reason:
                    b.skip(reason, rel)
                else:
                    st = de.stat(follow_symlinks=False)
                    children.append(LocalDir(de.path, rel, (st.st_dev, st.st_ino)))
                continue
            st = None
            try:
                st = os.stat(de.path) if is_link else de.stat(follow_symlinks=False)
            except OSError:
                pass
            if is_link and st is not None and stat.S_ISDIR(st.st_mode):
                reason = skip.reason(name, True)
                if reason:
                    b.skip(reason, rel)
                elif spec.follow_symlinks:
                    children.append(LocalDir(de.path, rel, (st.st_dev, st.st_ino)))
                else:
                    b.skip("symlink_dir", rel)
                continue
            size, version = (st.st_size, str(st.st_mtime_ns)) if st is not None else (0, "")
            reason = skip.reason(name, False)
            if reason:
                b.skip(reason, rel, size, version)
                continue
            kind = names.kind_of(name, spec.fmt)
            if kind is None:
                b.skip("suffix", rel, size, version)
                continue
            e = Entry(
                rel,
                f"{dir_id}/{names.encode(name)}",
                size,
                version,
                kind,
                None,
                label if kind == FILES else None,
            )
            if st is None:
                e.error = "broken_link" if is_link else "read_error:stat"
            elif not stat.S_ISREG(st.st_mode):
                e.error = "not_a_regular_file"
            if kind == FILES:
                b.file(e, natural=is_boundary(rel, fps))
            else:
                b.single(e)
        b.end_sequence()
    out = b.finish()
    out["children"] = children
    return out


def list_local_file(spec: ListSpec, part: int, path: bytes) -> dict[str, Any]:
    """An input that is one file."""
    b = PartBuilder(spec, part)
    name = os.path.basename(path)
    st = os.stat(path)
    kind = names.kind_of(name, spec.fmt)
    if kind is None:
        b.skip("suffix", name, st.st_size, str(st.st_mtime_ns))
    else:
        e = Entry(name, names.local_id(path), st.st_size, str(st.st_mtime_ns), kind)
        b.file(e, natural=True) if kind == FILES else b.single(e)
    out = b.finish()
    out["children"] = []
    return out


# ------------------------------------------------------------------------------------------- S3


@dataclass
class S3Range:
    """Keys of folder ``prefix`` (direct children only) in ``(after, stop]``; None: from the start / to the end."""

    bucket: str
    prefix: str
    after: str | None = None
    stop: str | None = None

    @property
    def at_start(self) -> bool:
        return self.after is None


def _pages(client, r: S3Range, page_keys: int) -> Iterator[list[tuple[str, dict | None]]]:
    """Pages of ``(name, object or None for a sub-folder)`` in key order, from ``r.after`` on."""
    kwargs: dict[str, Any] = {"Bucket": r.bucket, "Prefix": r.prefix, "Delimiter": "/", "MaxKeys": page_keys}
    if r.after is not None:
        kwargs["StartAfter"] = r.after
    while True:
        resp = storage.with_retries(
            f"s3://{r.bucket}/{r.prefix}", "list", lambda: client.list_objects_v2(**kwargs)
        )
        items = [(o["Key"], o) for o in resp.get("Contents", [])]
        items += [(p["Prefix"], None) for p in resp.get("CommonPrefixes", [])]
        items.sort(key=lambda kv: kv[0].encode())
        yield items
        if not resp.get("IsTruncated"):
            return
        kwargs.pop("StartAfter", None)
        kwargs["ContinuationToken"] = resp["NextContinuationToken"]


def split_points(base: int, first: str, last: str, stop: str | None, alphabet: str) -> list[str]:
    """Keys that cut ``(last, stop]`` into pieces: ``last[:p] + c`` for every character ``c`` seen (greater than
    ``last[p]``) at each position ``p`` from the first where the listed keys varied back to ``base`` (the
    folder prefix's length). Any sorted cut partitions the range; these just make the pieces even for the
    usual names (hashes, counters, words)."""
    d = min(len(os.path.commonprefix([first, last])), len(last) - 1)
    pts = {last[:p] + c for p in range(base, d + 1) for c in alphabet if c > last[p]}
    out = sorted(p for p in pts if p > last and (stop is None or p < stop))
    if len(out) > MAX_SPLITS:
        idx = [round(i * (len(out) - 1) / (MAX_SPLITS - 1)) for i in range(MAX_SPLITS)]
        out = [out[i] for i in sorted(set(idx))]
    return out


def _alphabet(chars: set[str]) -> str:
    a = sorted(chars)
    if len(a) > MAX_ALPHABET:
        a = [a[round(i * (len(a) - 1) / (MAX_ALPHABET - 1))] for i in range(MAX_ALPHABET)]
    return "".join(a)


def _s3_entry(spec: ListSpec, root_len: int, bucket: str, key: str, obj: dict, kind: str) -> Entry:
    rel = key[root_len:].encode()
    return Entry(
        rel,
        names.s3_id(bucket, key),
        int(obj.get("Size", 0)),
        str(obj.get("ETag", "")).strip('"'),
        kind,
        label=_label(spec, rel) if kind == FILES else None,
    )


def _root_prefix(spec: ListSpec) -> tuple[str, str]:
    bucket, _, key = spec.root[len("s3://") :].partition("/")
    key = key.rstrip("/")
    return bucket, (key + "/" if key else "")


def list_s3(spec: ListSpec, part: int, ranges: list[S3Range]) -> dict[str, Any]:
    """List each range into one manifest part; returns sub-folders and the split rest of long ranges."""
    client = storage.s3_client()
    b = PartBuilder(spec, part)
    skip = SkipRules(spec.skip)
    root_len = len(_root_prefix(spec)[1])
    children: list[S3Range] = []
    for r in ranges:
        _list_range(spec, b, skip, client, r, root_len, children)
        b.end_sequence()
    out = b.finish()
    out["children"] = children
    return out


def _list_range(
    spec, b: PartBuilder, skip: SkipRules, client, r: S3Range, root_len: int, children: list
) -> None:
    owning = r.at_start  # a range that does not start its folder first skips the previous range's last shard
    stop = r.stop
    first = last = None
    chars: set[str] = set()
    pages = 0
    finishing = False  # past the range's end: only the files of the last shard, up to the next boundary
    for items in _pages(client, r, spec.page_keys):
        pages += 1
        for key, obj in items:
            if not finishing and stop is not None and key > stop:
                finishing = True
            rel = key[root_len:].encode()
            if obj is None:  # a sub-folder
                if finishing:
                    continue
                name = rel.rstrip(b"/").rpartition(b"/")[2]
                reason = skip.reason(name, True)
                if reason:
                    b.skip(reason, rel)
                else:
                    children.append(S3Range(r.bucket, key))
                last = key
                continue
            name = rel.rpartition(b"/")[2]
            kind = names.kind_of(name, spec.fmt) if name else None
            reason = skip.path_reason(rel) if name else None
            is_file_member = kind == FILES and reason is None
            if finishing:
                if not is_file_member or not owning:
                    continue
                if is_boundary(rel, spec.files_per_shard):
                    return _split(spec, r, first, last, chars, children, stop, exhausted=True)
                b.file(_s3_entry(spec, root_len, r.bucket, key, obj, kind), natural=False)
                continue
            if first is None:
                first = key
            last = key
            chars.update(key[len(r.prefix) :])
            if not name:
                b.skip("folder_marker", rel, int(obj.get("Size", 0)), str(obj.get("ETag", "")))
            elif reason:
                b.skip(reason, rel, int(obj.get("Size", 0)), str(obj.get("ETag", "")))
            elif kind is None:
                b.skip("suffix", rel, int(obj.get("Size", 0)), str(obj.get("ETag", "")))
            elif kind == FILES:
                natural = is_boundary(rel, spec.files_per_shard)
                if not owning and not natural:
                    continue  # the previous range's last shard: it reads this file
                owning = True
                b.file(_s3_entry(spec, root_len, r.bucket, key, obj, kind), natural=natural)
            else:
                b.single(_s3_entry(spec, root_len, r.bucket, key, obj, kind))
        if not finishing and pages >= spec.pages_per_item and last is not None:
            # stop owning here: the rest of the range goes to new items; finish the open shard first
            stop = last
            finishing = True
            _split(spec, r, first, last, chars, children, r.stop, exhausted=False)
            if not owning:
                return
    return None


def _split(spec, r: S3Range, first, last, chars, children, stop, exhausted: bool) -> None:
    if exhausted or first is None or last is None:
        return
    pts = split_points(len(r.prefix), first, last, stop, _alphabet(chars))
    bounds = [last, *pts]
    for lo, hi in zip(bounds, [*pts, stop]):
        children.append(S3Range(r.bucket, r.prefix, lo, hi))


def list_s3_object(
    spec: ListSpec, part: int, bucket: str, key: str, size: int, version: str
) -> dict[str, Any]:
    """An input that is one object."""
    b = PartBuilder(spec, part)
    name = key.rpartition("/")[2].encode()
    kind = names.kind_of(name, spec.fmt)
    if kind is None:
        b.skip("suffix", name, size, version)
    else:
        e = Entry(name, names.s3_id(bucket, key), size, version, kind)
        b.file(e, natural=True) if kind == FILES else b.single(e)
    out = b.finish()
    out["children"] = []
    return out


def as_dict(x: Any) -> Any:
    return dataclasses.asdict(x)
