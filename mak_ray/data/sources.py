"""A shard: the unit of reading, of output partitioning and of resume.

Its rows go to ``shard=<sid>/`` and a marker records that it finished. Shards are made by the listing
(:mod:`mak_ray.data.listing`, which says how they are cut and named) and kept in the manifest
(:mod:`mak_ray.data.manifest`); a read task loads one shard's members from the manifest by its row range
(:func:`load_shard`). Shard ids are made there, never taken from pool data, so a key such as ``../x`` cannot
reach an output path.

Kinds:
- ``files``: image files (jpg jpeg png webp bmp gif tif tiff) of one folder; the row id is the file's id
  (a percent-encoded URI, :mod:`mak_ray.data.names`); the label is the parent folder's name when
  ``labels_from_parent`` (files directly under the root have none).
- ``tar``: one ``.tar`` (or ``.tar.gz``/``.tgz``), WebDataset style; the row id is ``<tar id>#<member key>``.
- ``parquet``: one ``.parquet`` file, or a run of its whole row groups; ids, image bytes and labels come from
  the configured columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

UNIT_COLUMNS = ("shard", "kind", "part", "start", "stop", "rows")


@dataclass
class Shard:
    shard_id: str
    kind: str  # "files" | "tar" | "parquet"
    paths: list[str]  # object ids
    labels: list[str | None] | None = None  # per path, for "files"
    row_groups: list[int] | None = None  # "parquet" cut by row group: the one file's row groups to read
    rows: int | None = None  # "parquet": rows in the shard, from the footer (None when it was unreadable)
    errors: list[str | None] | None = None  # per path: a failure found while listing (the object is not read)
    versions: list[str] | None = None  # per path: its object version (see object_version) when listed

    def version_of(self, row: int) -> str | None:
        """The object version of the ``row``-th record this shard yields (a tar's or Parquet file's members
        share the file's)."""
        if not self.versions:
            return None
        return self.versions[row] if self.kind == "files" else self.versions[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Shard:
        return cls(**d)

    @classmethod
    def from_manifest(cls, sid: str, kind: str, rows: pa.Table) -> Shard:
        """The shard whose manifest rows are ``rows``."""
        ids = rows.column("id").to_pylist()
        errors = rows.column("error").to_pylist()
        versions = object_versions(rows).to_pylist()
        if kind == "files":
            return cls(sid, kind, ids, rows.column("label").to_pylist(), errors=errors, versions=versions)
        groups = rows.column("row_groups").to_pylist()[0]
        return cls(
            sid, kind, ids[:1], None, groups, rows.column("rows").to_pylist()[0], errors[:1], versions[:1]
        )

    @property
    def known_rows(self) -> int | None:
        """Rows this shard will yield, when known without reading it (image files: one row per file; Parquet:
        the footer's count; a tar or Parquet file that could not be listed: one failed row)."""
        if self.kind == "files":
            return len(self.paths)
        if self.errors and self.errors[0]:
            return 1
        return self.rows


def object_versions(rows: pa.Table) -> pa.Array:
    """``<size>:<version>`` (version: local mtime_ns, S3 ETag) of each manifest row: what an output row records
    of the object it came from, so that a later run knows the object is unchanged without reading it."""
    import pyarrow.compute as pc

    size = rows.column("size").cast(pa.string())
    version = pc.fill_null(rows.column("version"), "")
    return pc.binary_join_element_wise(size, version, ":").combine_chunks()


def load_shard(unit: dict[str, Any], part_uris: list[str]) -> Shard:
    """The shard of one shard-index row (``UNIT_COLUMNS``), its members read from its manifest part."""
    from mak_ray.data.manifest import read_rows

    rows = read_rows(part_uris[int(unit["part"])], int(unit["start"]), int(unit["stop"]))
    return Shard.from_manifest(str(unit["shard"]), str(unit["kind"]), rows)
