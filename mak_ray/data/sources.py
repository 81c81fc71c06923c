"""Plan an input (folder or s3:// prefix of images, WebDataset tar shards, or Parquet) into shards.

A shard is the unit of work, of output partitioning and of resume: its rows go to ``shard=<sid>/`` and a
marker records that it finished. Shard ids must therefore be stable across reruns over the same input and
change when the input does: ``<index>-<hash of the shard's paths>``. They are made here, never taken from
pool data, so a key such as ``../x`` cannot reach an output path.

Formats (``DataSection.format = "auto"`` picks by file suffix):
- ``images``: image files (jpg jpeg png webp bmp gif tif tiff), listed recursively and sorted, cut into shards
  of ``files_per_shard``; the row id is the file URI; the label is the parent folder's name when
  ``labels_from_parent`` (files directly under the root have none).
- ``tar``: one shard per ``.tar`` (or ``.tar.gz``/``.tgz``), WebDataset style; the row id is ``<tar uri>#<key>``.
- ``parquet``: one shard per ``.parquet`` file, or per run of whole row groups of about ``rows_per_shard`` rows
  when a file holds more (its footer is read at planning); ids, image bytes and labels come from the
  configured columns.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import posixpath
from dataclasses import dataclass

from mak_ray import storage
from mak_ray.config import DataSection

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
FOOTER_THREADS = 16  # Parquet footers are read at planning; object-store latency bounds it


@dataclass
class Shard:
    shard_id: str
    kind: str  # "files" | "tar" | "parquet"
    paths: list[str]
    labels: list[str | None] | None = None  # per path, for "files" with labels_from_parent
    row_groups: list[int] | None = None  # "parquet" cut by row group: the one path's row groups to read
    rows: int | None = None  # "parquet": rows in the shard, from the footer (None when it was unreadable)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Shard:
        return cls(**d)

    @property
    def known_rows(self) -> int | None:
        """Rows this shard will yield, when known without reading it (image files: one row per file; Parquet:
        the footer's count)."""
        return len(self.paths) if self.kind == "files" else self.rows


def _shard_id(index: int, width: int, paths: list[str]) -> str:
    h = hashlib.sha1("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{index:0{width}d}-{h}"


def detect_format(files: list[str]) -> str:
    """``tar`` / ``parquet`` / ``images`` from the listed file suffixes; mixing tar and Parquet is an error."""
    lower = [f.lower() for f in files]
    n_tar = sum(f.endswith(TAR_SUFFIXES) for f in lower)
    n_parquet = sum(f.endswith(PARQUET_SUFFIXES) for f in lower)
    if n_tar and n_parquet:
        raise ValueError(f"input mixes {n_tar} tar and {n_parquet} Parquet files; set data.format explicitly")
    if n_tar:
        return "tar"
    if n_parquet:
        return "parquet"
    return "images"


def _parent_label(root: str, path: str) -> str | None:
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.basename(path)
    parent = posixpath.dirname(rel)
    return posixpath.basename(parent) if parent else None


def _row_group_runs(uri: str, rows_per_shard: int) -> list[tuple[list[int] | None, int | None]]:
    """Runs of consecutive row groups of about ``rows_per_shard`` rows, with their row counts; one run
    ``None`` (the whole file) when it is no bigger, has one row group, or its footer cannot be read (then its
    count is None too, and the reader reports the failure)."""
    import pyarrow.parquet as pq

    try:
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    except Exception as exc:  # noqa: BLE001
        log.debug("%s: footer not readable (%s); one shard", uri, type(exc).__name__)
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


def _parquet_groups(
    files: list[str], rows_per_shard: int
) -> list[tuple[list[str], list[int] | None, int | None]]:
    with cf.ThreadPoolExecutor(FOOTER_THREADS) as pool:
        runs = list(pool.map(lambda f: _row_group_runs(f, rows_per_shard), files))
    return [([f], run, rows) for f, file_runs in zip(files, runs) for run, rows in file_runs]


def plan_shards(
    uri: str,
    fmt: str = "auto",
    files_per_shard: int = 1000,
    labels_from_parent: bool = True,
    parquet_rows_per_shard: int = 10_000,
) -> list[Shard]:
    """List ``uri`` once and cut it into shards. Raises before any heavy work if nothing usable is there."""
    files = storage.list_files(uri)
    if fmt == "auto":
        fmt = detect_format(files)
    if fmt == "tar":
        chosen = [f for f in files if f.lower().endswith(TAR_SUFFIXES)]
        groups = [([f], None, None) for f in chosen]
        kind = "tar"
    elif fmt == "parquet":
        chosen = [f for f in files if f.lower().endswith(PARQUET_SUFFIXES)]
        groups = _parquet_groups(chosen, parquet_rows_per_shard)
        kind = "parquet"
    elif fmt == "images":
        chosen = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        skipped = len(files) - len(chosen)
        if skipped:
            log.info("%s: skipping %d files without an image suffix", uri, skipped)
        groups = [
            (chosen[i : i + files_per_shard], None, None) for i in range(0, len(chosen), files_per_shard)
        ]
        kind = "files"
    else:
        raise ValueError(f"unknown data format {fmt!r}")
    if not groups:
        raise ValueError(f"no {fmt} inputs found under {uri}")
    width = max(5, len(str(len(groups) - 1)))
    root = uri.rstrip("/")
    shards = []
    for i, (paths, row_groups, rows) in enumerate(groups):
        labels = [_parent_label(root, p) for p in paths] if kind == "files" and labels_from_parent else None
        key = paths if row_groups is None else [f"{paths[0]}#row_groups={row_groups[0]}-{row_groups[-1]}"]
        shards.append(Shard(_shard_id(i, width, key), kind, paths, labels, row_groups, rows))
    log.info("%s: %d %s inputs in %d shards", uri, len(chosen), fmt, len(shards))
    return shards


def plan_from_config(uri: str, data: DataSection) -> list[Shard]:
    return plan_shards(
        uri, data.format, data.files_per_shard, data.labels_from_parent, data.parquet_rows_per_shard
    )
