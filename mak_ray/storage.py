"""One place for URIs: local paths and ``s3://bucket/prefix``, both through ``pyarrow.fs``.

S3 settings come from the standard AWS chain (environment, profile, instance role / IRSA) plus
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible stores such as MinIO or moto.
Credentials are never logged: only the endpoint and region are. Writes are atomic: local files are
written beside their target and renamed; an S3 PUT only becomes visible when it completes.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

S3_RETRY_ATTEMPTS = 10
APP_RETRY_ATTEMPTS = 8
APP_RETRY_BASE_S = 0.1
# Errors that another try cannot fix: report them at once.
_PERMANENT = (
    "accessdenied",
    "forbidden",
    "httpstatus403",
    "nosuchkey",
    "nosuchbucket",
    "httpstatus404",
    "resourcenotfound",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "pathdoesnotexist",
)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    # The SDK spells codes both ways ("AccessDenied", "ACCESS_DENIED"): compare without case or underscores.
    text = str(exc).lower().replace("_", "").replace(" ", "")
    return isinstance(exc, OSError) and not any(p in text for p in _PERMANENT)


def with_retries(uri: str, what: str, fn):
    """Run ``fn()``; on S3, retry transient failures with jittered exponential backoff.

    The AWS SDK inside pyarrow retries most 500/503 answers itself, but not all: an error body that arrives
    while a small GET is streamed surfaces as a non-retryable "Failed to flush response stream", and a
    reset mid-body as a read error. This retry sits above the SDK and covers those.
    """
    if not is_s3(uri):
        return fn()
    for attempt in range(APP_RETRY_ATTEMPTS):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == APP_RETRY_ATTEMPTS - 1 or not _transient(exc):
                raise
            delay = APP_RETRY_BASE_S * (2**attempt) * (0.5 + random.random())
            log.warning(
                "%s %s failed (%s); retry %d/%d in %.2f s",
                what,
                uri,
                str(exc).splitlines()[0][:200],
                attempt + 1,
                APP_RETRY_ATTEMPTS - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_RETRY_ATTEMPTS),
        "connect_timeout": 10,
        "request_timeout": 60,
        # Ray Train creates its folders through this filesystem; without this check pyarrow writes an empty
        # marker object for every parent "directory", i.e. outside the run's output prefix.
        "check_directory_existence_before_creation": True,
    }
    if region:
        kwargs["region"] = region
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    log.debug("S3 filesystem: endpoint=%s region=%s", endpoint or "<aws default>", region or "<default>")
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str | None):
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": S3_RETRY_ATTEMPTS, "mode": "standard"}, max_pool_connections=32)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def s3_client():
    """A boto3 S3 client for the current environment (cached per endpoint/region), for what pyarrow's
    filesystem cannot do: listing a key range (``StartAfter``) one folder level at a time."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _client(_endpoint(), region)


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem for the current environment (cached per endpoint/region)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _s3(_endpoint(), region)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path inside it)`` for a local path or an ``s3://`` URI."""
    if is_s3(uri):
        rest = uri[len("s3://") :]
        if not rest or rest.startswith("/"):
            raise ValueError(f"bad S3 URI {uri!r}: expected s3://bucket/key")
        return s3_filesystem(), rest.rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _to_uri(uri_like: str, path: str) -> str:
    return f"s3://{path}" if is_s3(uri_like) else path


def join(uri: str, *parts: str) -> str:
    """Join path parts; each part must stay inside ``uri`` (no '..', no absolute parts)."""
    out = uri.rstrip("/")
    for part in parts:
        part = str(part)
        if part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"path part {part!r} would escape {uri!r}")
        out = posixpath.join(out, part) if out else part
    return out


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return with_retries(uri, "stat", lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def list_files(uri: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """All files under ``uri`` (recursive, sorted), as full URIs; hidden and temp files are skipped."""
    fs, path = filesystem(uri)
    info = with_retries(uri, "stat", lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or prefix: {uri}")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = with_retries(uri, "list", lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)))
    out = []
    for fi in infos:
        if fi.type != pafs.FileType.File:
            continue
        base = posixpath.basename(fi.path)
        if base.startswith(".") or base.startswith("_"):
            continue
        if suffixes and not base.lower().endswith(tuple(s.lower() for s in suffixes)):
            continue
        out.append(_to_uri(uri, fi.path))
    return sorted(out)


def list_dirs(uri: str) -> list[str]:
    """Names of the folders (S3: common prefixes) directly under ``uri``; none when it does not exist."""
    fs, path = filesystem(uri)
    sel = pafs.FileSelector(path, recursive=False, allow_not_found=True)
    infos = with_retries(uri, "list", lambda: fs.get_file_info(sel))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return with_retries(uri, "read", read)


def _atomic_local_target(path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object atomically: readers see the old object or the new one, never a part."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = _atomic_local_target(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return

    def put() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    with_retries(uri, "write", put)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npy(uri: str, arr) -> None:
    """One numpy array as an .npy object (no pickles), atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes(uri, buf.getvalue())


def read_npy(uri: str):
    import numpy as np

    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file or a directory of them (recursively) into a table."""
    fs, path = filesystem(uri)
    if with_retries(uri, "stat", lambda: fs.get_file_info(path).type) == pafs.FileType.Directory:
        files = list_files(uri, (".parquet",))
        if not files:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        return pa.concat_tables([read_parquet(f, columns) for f in files], promote_options="default")
    return with_retries(uri, "read", lambda: pq.read_table(path, columns=columns, filesystem=fs))


def write_parquet(
    table: pa.Table, uri: str, row_group_size: int | None = None, plain: Sequence[str] = ()
) -> None:
    """Write a table to one Parquet object, atomically; zstd and dictionary pages, except for the ``plain``
    columns, written with neither: dense floats (embeddings) rarely repeat a value, so a dictionary only
    adds a lookup per value when they are read, and compression saves little on them."""
    buf = io.BytesIO()
    if plain:
        names = table.column_names
        missing = set(plain) - set(names)
        if missing:
            raise KeyError(f"plain columns not in the table: {sorted(missing)}")
        compression: str | dict[str, str] = {c: "NONE" if c in plain else "zstd" for c in names}
        dictionary: bool | list[str] = [c for c in names if c not in plain]
    else:
        compression, dictionary = "zstd", True
    pq.write_table(
        table, buf, compression=compression, use_dictionary=dictionary, row_group_size=row_group_size
    )
    write_bytes(uri, buf.getvalue())


def delete(uri: str) -> None:
    """Delete a file or a whole prefix; missing is fine."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif is_s3(uri):
        try:
            fs.delete_dir_contents(path, missing_dir_ok=True)
        except OSError:
            pass
