"""Raw records (id, bytes, label, error) from one shard, never raising for a bad object.

Objects are opened by id (:mod:`mak_ray.data.names`): a local file by its exact path bytes, an S3 object
through :mod:`mak_ray.storage` (pyarrow filesystems, S3 retries with backoff). A per-object failure (403, an
object deleted between listing and reading) becomes a record with ``error = "read_error:<short reason>"``; a
failure found while listing (a broken link) is a record with that error, and the object is not opened; a
tar or Parquet file that cannot be opened becomes one record whose id is the file's id. Tar member names
are percent-encoded like file names; Parquet ids come from the data and are kept as they are (valid UTF-8
text). Ids are never used to build a path.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from mak_ray import storage
from mak_ray.config import DataSection
from mak_ray.data import names
from mak_ray.data.names import IMAGE_SUFFIXES, SkipRules
from mak_ray.data.sources import Shard

log = logging.getLogger(__name__)

FETCH_THREADS = 16  # object-store latency, not bandwidth, bounds small-file reads: overlap them
PARQUET_BATCH_ROWS = 256


@dataclass
class Record:
    id: str
    data: bytes | None
    label: str | None
    error: str | None


def safe_text(s: str) -> str:
    """Valid UTF-8 text for an id or label taken from pool data (lone surrogates -> ``\\xNN``)."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_error(exc: BaseException) -> str:
    """``read_error:<short>``: not_found, access_denied, or the exception type (no message: it may hold URLs)."""
    msg = str(exc).lower()
    if isinstance(exc, FileNotFoundError) or "nosuchkey" in msg or "not found" in msg or "404" in msg:
        short = "not_found"
    elif isinstance(exc, PermissionError) or "access_denied" in msg or "accessdenied" in msg or "403" in msg:
        short = "access_denied"
    else:
        short = type(exc).__name__
    return f"read_error:{short}"


def open_object(rid: str, stream: bool = False):
    """A binary file object of the object with id ``rid`` (see :mod:`mak_ray.data.names`); seekable unless
    ``stream`` (one sequential GET on S3)."""
    is_s3, path = names.id_to_path(rid)
    if not is_s3:
        return open(path, "rb")
    uri = "s3://" + path.decode("utf-8")
    fs, p = storage.filesystem(uri)
    return storage.with_retries(
        uri, "open", lambda: fs.open_input_stream(p) if stream else fs.open_input_file(p)
    )


def iter_records(shard: Shard, data: DataSection) -> Iterator[Record]:
    if shard.kind == "files":
        yield from _iter_files(shard)
        return
    if shard.kind not in ("tar", "parquet"):
        raise ValueError(f"unknown shard kind {shard.kind!r}")
    errors = shard.errors or [None] * len(shard.paths)
    for rid, err in zip(shard.paths, errors):
        if err:
            yield Record(rid, None, None, err)
        elif shard.kind == "tar":
            yield from iter_tar(rid, SkipRules(data.skip))
        else:
            yield from _iter_parquet(rid, data, shard.row_groups)


def read_object(rid: str) -> bytes:
    """The whole object with id ``rid`` (S3: retried like every storage read)."""
    is_s3, path = names.id_to_path(rid)
    if is_s3:
        return storage.read_bytes("s3://" + path.decode("utf-8"))
    with open(path, "rb") as f:
        return f.read()


def fetch(rid: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` or ``(None, read_error:<reason>)``: one unreadable object is one failed row."""
    try:
        return read_object(rid), None
    except Exception as exc:  # noqa: BLE001
        return None, read_error(exc)


def fetch_many(rids: list[str]) -> Iterator[tuple[bytes | None, str | None]]:
    """:func:`fetch` of each id, in order, overlapped on threads (object-store latency, not bandwidth, bounds
    small reads); chunks bound how many bytes are held at once."""
    with cf.ThreadPoolExecutor(max_workers=min(FETCH_THREADS, max(1, len(rids)))) as pool:
        for start in range(0, len(rids), 4 * FETCH_THREADS):
            yield from pool.map(fetch, rids[start : start + 4 * FETCH_THREADS])


def _iter_files(shard: Shard) -> Iterator[Record]:
    labels = shard.labels or [None] * len(shard.paths)
    errors = shard.errors or [None] * len(shard.paths)
    todo = [rid for rid, err in zip(shard.paths, errors) if not err]
    fetched = fetch_many(todo)
    for rid, label, err in zip(shard.paths, labels, errors):
        if err:
            yield Record(rid, None, label, err)
        else:
            data, read_err = next(fetched)
            yield Record(rid, data, label, read_err)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename; the rest is the extension."""
    d, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(d, stem) if d else stem, ext.lower()


def _sample_record(tar_id: str, key: str, members: dict[str, bytes]) -> Record:
    rid = names.member_id(tar_id, key.encode("utf-8", "surrogateescape"))
    image = next((members[e] for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_SUFFIXES), None)
    label = None
    for ext in ("cls", "label", "txt"):
        if ext in members:
            label = safe_text(members[ext].decode("utf-8", "surrogateescape").strip()) or None
            break
    if image is None:
        return Record(rid, None, label, "no_image")
    return Record(rid, image, label, None)


def iter_tar(uri: str, skip: SkipRules) -> Iterator[Record]:
    """Stream a tar sequentially (no seeks: one GET on S3), grouping consecutive members by key; members whose
    name ``data.skip`` matches (any path component) are left out."""
    try:
        stream = open_object(uri, stream=True)
    except Exception as exc:  # noqa: BLE001
        yield Record(uri, None, None, read_error(exc))
        return
    key: str | None = None
    members: dict[str, bytes] = {}
    n = 0
    try:
        with (
            stream,
            tarfile.open(fileobj=stream, mode="r|*", encoding="utf-8", errors="surrogateescape") as tar,
        ):
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = _split_key(info.name)
                if not ext or skip.path_reason(info.name.encode("utf-8", "surrogateescape")):
                    continue
                if k != key and key is not None:
                    yield _sample_record(uri, key, members)
                    n += 1
                    members = {}
                key = k
                f = tar.extractfile(info)
                members[ext] = f.read() if f is not None else b""
        if key is not None:
            yield _sample_record(uri, key, members)
            n += 1
    except Exception as exc:  # noqa: BLE001 - an unreadable or truncated tar: one failed row for the file
        reason = "corrupt_tar" if isinstance(exc, tarfile.TarError) else read_error(exc)
        if n == 0 and key is None:
            yield Record(uri, None, None, reason)
        else:
            log.warning(
                "%s: tar stream failed after %d samples (%s); the rest of the file is lost", uri, n, reason
            )
            yield Record(f"{uri}#%3Cafter%20{n}%20samples%3E", None, None, reason)


def image_bytes(value: object) -> bytes | None:
    """Binary cell, or a ``{"bytes": ...}`` struct (Hugging Face ``Image`` feature)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def parquet_row_id(value: object) -> str | None:
    """The row id a Parquet id cell gives (None when missing or empty): the one rule for readers and checks."""
    if value is None or str(value) == "":
        return None
    return safe_text(str(value))


def _first_row(pf: pq.ParquetFile, row_groups: list[int] | None) -> int:
    """Row number (in the file) of the first row read, so ``#row=`` ids stay unique when a file is cut."""
    return sum(pf.metadata.row_group(i).num_rows for i in range(row_groups[0])) if row_groups else 0


def iter_parquet_ids(uri: str, data: DataSection, row_groups: list[int] | None = None) -> Iterator[str]:
    """The ids of one Parquet file (or of its ``row_groups``), reading only the id column; a file that cannot
    be read yields what it could (the image reader reports the failure as a row)."""
    try:
        with open_object(uri) as f:
            pf = pq.ParquetFile(f)
            if data.id_column not in pf.schema_arrow.names:
                return
            for batch in pf.iter_batches(batch_size=65536, columns=[data.id_column], row_groups=row_groups):
                for v in batch.column(0).to_pylist():
                    rid = parquet_row_id(v)
                    if rid is not None:
                        yield rid
    except Exception as exc:  # noqa: BLE001
        log.debug("%s: id column not readable (%s)", uri, type(exc).__name__)


def _open_failure(exc: Exception) -> str:
    return "corrupt_parquet" if isinstance(exc, pa.ArrowInvalid) else read_error(exc)


def _iter_parquet(uri: str, data: DataSection, row_groups: list[int] | None = None) -> Iterator[Record]:
    """The file's rows; its handle is closed when they are all read or the reader stops early."""
    try:
        f = open_object(uri)
    except Exception as exc:  # noqa: BLE001
        yield Record(uri, None, None, _open_failure(exc))
        return
    with f:
        yield from _parquet_rows(uri, f, data, row_groups)


def _parquet_rows(uri: str, f, data: DataSection, row_groups: list[int] | None) -> Iterator[Record]:
    try:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
    except Exception as exc:  # noqa: BLE001
        yield Record(uri, None, None, _open_failure(exc))
        return
    for col in (data.id_column, data.image_column):
        if col not in names:
            yield Record(uri, None, None, f"missing_column:{col}")
            return
    columns = [data.id_column, data.image_column] + (
        [data.label_column] if data.label_column in names else []
    )
    row = 0
    try:
        row = _first_row(pf, row_groups)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns, row_groups=row_groups):
            ids = batch.column(data.id_column).to_pylist()
            images = batch.column(data.image_column).to_pylist()
            labels = batch.column(data.label_column).to_pylist() if len(columns) == 3 else [None] * len(ids)
            for rid, img, label in zip(ids, images, labels):
                label = None if label is None else safe_text(str(label))
                rid = parquet_row_id(rid)
                if rid is None:
                    yield Record(f"{uri}#row={row}", None, label, "missing_id")
                else:
                    b = image_bytes(img)
                    yield Record(rid, b, label, None if b is not None else "missing_image")
                row += 1
    except Exception as exc:  # noqa: BLE001
        reason = "corrupt_parquet" if isinstance(exc, (pa.ArrowInvalid, OSError)) else read_error(exc)
        log.warning("%s: Parquet read failed after %d rows (%s)", uri, row, reason)
        yield Record(f"{uri}#%3Cafter%20{row}%20rows%3E", None, None, reason)
