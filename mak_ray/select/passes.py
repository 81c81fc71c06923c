"""The select stage's passes over the score output, as functions of a group of part files (one Ray task each).

Rows are named by their position (file index, row in file) in the output's stable file order, which is also the
tie-break of every ranking: ties go to the lower position. A pass returns only small, mergeable results:

1. :func:`stats_pass`: z-statistics and the ranges of ECLE, proximity and nearest-target distance over the
   usable rows, and a uniform sample of the rows' key columns (a fixed number of rows, whatever the pool size),
   from which the driver estimates where each method's top ``n`` ends;
2. :func:`histogram_pass`: per method, counts of keys in given bins (to find where the top ``n`` ends exactly,
   when the sample's estimate cannot be used);
3. :func:`candidates_pass`: per method, writes the rows at or above a key bound to a candidate Parquet file
   (with their embeddings when the method runs K-center) and returns the rows in the boundary bin.

Every file is opened once per pass and read with its needed columns in one call; the embedding column, whose
decoding costs far more than the small columns, is read only for files that hold a candidate of a method that
runs K-center, and only its candidate rows are kept.

See :mod:`mak_ray.select.cut` for how the driver turns histograms or the candidates into the exact cut.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mak_ray import storage
from mak_ray.mak import ScoreStats
from mak_ray.select.methods import ranking_key

SMALL_COLUMNS = ("ecle", "proximity", "error")


@dataclass(frozen=True)
class KeySpec:
    """What a task needs to compute one method's ranking key."""

    method: str
    loss_weight: float
    seed: int
    stats: dict[str, Any]  # ScoreStats.to_dict()
    gate: float | None = None  # mak_gated's gate on nn_distance

    def keys(self, table: pa.Table) -> np.ndarray:
        return ranking_key(
            self.method,
            ecle=table.column("ecle").to_numpy(),
            proximity=table.column("proximity").to_numpy(),
            ids=table.column("id") if "id" in table.column_names else None,
            nn=table.column("nn_distance").to_numpy() if "nn_distance" in table.column_names else None,
            gate=self.gate,
            stats=ScoreStats.from_dict(self.stats),
            loss_weight=self.loss_weight,
            seed=self.seed,
            n=table.num_rows,
        )

    @property
    def columns(self) -> list[str]:
        """The score output's columns this key reads."""
        return method_columns(self.method)


def method_columns(method: str) -> list[str]:
    """The score output's columns a method's key reads."""
    extra = {"random": ["id"], "mak_gated": ["nn_distance"]}.get(method, [])
    return ["ecle", "proximity", *extra]


def key_columns(specs: list[KeySpec]) -> list[str]:
    return list(dict.fromkeys(c for s in specs for c in s.columns))


def _usable(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    ok = pc.is_null(table.column("error"))
    rows = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
    return (table if len(rows) == table.num_rows else table.filter(ok)), rows


def read_usable(uri: str, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """``columns`` of the usable rows (``error`` is null) of one part file, and their row numbers in it."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        table = pq.ParquetFile(f).read(columns=list(dict.fromkeys([*columns, "error"])), use_threads=False)
    return _usable(table)


# ------------------------------------------------------------------------------------------- pass 1


@dataclass
class PoolStats:
    """Mergeable result of :func:`stats_pass`; ``sample`` holds the key columns of a uniform sample of the
    usable rows, each row drawn with probability ``rate``."""

    stats: ScoreStats = field(default_factory=ScoreStats.empty)
    rows: int = 0
    ecle_range: tuple[float, float] = (np.inf, -np.inf)
    proximity_range: tuple[float, float] = (np.inf, -np.inf)
    nn_range: tuple[float, float] = (np.inf, -np.inf)  # stays empty for an output without nn_distance
    sample: pa.Table | None = None
    rate: float = 0.0

    def merge(self, other: PoolStats) -> PoolStats:
        samples = [t for t in (self.sample, other.sample) if t is not None]
        return PoolStats(
            self.stats.merge(other.stats),
            self.rows + other.rows,
            (min(self.ecle_range[0], other.ecle_range[0]), max(self.ecle_range[1], other.ecle_range[1])),
            (
                min(self.proximity_range[0], other.proximity_range[0]),
                max(self.proximity_range[1], other.proximity_range[1]),
            ),
            (min(self.nn_range[0], other.nn_range[0]), max(self.nn_range[1], other.nn_range[1])),
            pa.concat_tables(samples, promote_options="permissive") if samples else None,
            max(self.rate, other.rate),
        )

    @property
    def usable(self) -> int:
        return self.stats.ecle.count


def _span(lo_hi: tuple[float, float], x: np.ndarray) -> tuple[float, float]:
    return min(lo_hi[0], float(x.min())), max(lo_hi[1], float(x.max()))


def stats_pass(
    files: list[str], first_file: int = 0, sample_columns: list[str] = (), rate: float = 0.0, seed: int = 0
) -> PoolStats:
    """Pool statistics of these files (file indices from ``first_file``), and ``sample_columns`` of their usable
    rows drawn with probability ``rate`` (seeded by the file index: the sample does not depend on grouping)."""
    out = PoolStats(rate=rate)
    samples = []
    for offset, uri in enumerate(files):
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            out.rows += pf.metadata.num_rows
            nn = ["nn_distance"] if "nn_distance" in pf.schema_arrow.names else []
            sampled = [c for c in sample_columns if c in pf.schema_arrow.names]
            columns = list(dict.fromkeys(["ecle", "proximity", *nn, *sampled, "error"]))
            table, _ = _usable(pf.read(columns=columns, use_threads=False))
        if not table.num_rows:
            continue
        e, p = table.column("ecle").to_numpy(), table.column("proximity").to_numpy()
        if nn:
            out.nn_range = _span(out.nn_range, table.column("nn_distance").to_numpy())
        out.stats.update(e, p)
        out.ecle_range = _span(out.ecle_range, e)
        out.proximity_range = _span(out.proximity_range, p)
        if rate > 0 and sampled:
            pick = np.random.default_rng([seed, first_file + offset]).random(table.num_rows) < rate
            samples.append(table.select(sampled).filter(pa.array(pick)))
    if samples:
        out.sample = pa.concat_tables(samples, promote_options="permissive")
    return out


# ------------------------------------------------------------------------------------------- pass 2


@dataclass
class Histogram:
    """Counts of keys per bin ``[edges[i], edges[i+1])``, keys at or above the last edge in ``above``, and each
    bin's smallest and largest key (to tell a bin of equal keys, which no finer bins can split)."""

    counts: np.ndarray
    above: int
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, edges: np.ndarray) -> Histogram:
        n_bins = len(edges) - 1
        above = int(np.count_nonzero(keys >= edges[-1]))
        keys = keys[(keys >= edges[0]) & (keys < edges[-1])]
        idx = np.searchsorted(edges, keys, side="right") - 1
        counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
        low = np.full(n_bins, np.inf)
        high = np.full(n_bins, -np.inf)
        np.minimum.at(low, idx, keys)
        np.maximum.at(high, idx, keys)
        return cls(counts, above, low, high)

    def merge(self, other: Histogram) -> Histogram:
        return Histogram(
            self.counts + other.counts,
            self.above + other.above,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
        )


def histogram_pass(files: list[str], specs: list[KeySpec], edges: list[np.ndarray]) -> list[Histogram]:
    """Per method (``specs[i]``), the histogram of its keys over ``edges[i]``."""
    columns = key_columns(specs)
    hists: list[Histogram | None] = [None] * len(specs)
    for uri in files:
        table, _ = read_usable(uri, columns)
        for i, (spec, e) in enumerate(zip(specs, edges)):
            h = Histogram.of(spec.keys(table), e)
            hists[i] = h if hists[i] is None else hists[i].merge(h)
    empty = [Histogram.of(np.zeros(0), e) for e in edges]
    return [h if h is not None else empty[i] for i, h in enumerate(hists)]


# ------------------------------------------------------------------------------------------- pass 3


@dataclass(frozen=True)
class CandidatePlan:
    """Where one method's candidates end: every row with key >= ``hi`` is in, rows in ``[lo, hi)`` are the
    boundary (the driver cuts among them), rows below ``lo`` are out."""

    spec: KeySpec
    lo: float
    hi: float
    out_uri: str  # this task's candidate file for the method
    with_embedding: bool
    boundary_counts_only: bool = False  # a boundary of equal keys: return per-file counts, not every row
    with_nn: bool = False  # the score output has nn_distance: carry it with the candidates


@dataclass
class Boundary:
    """The boundary rows a task saw for one method: ``(key, file, row)`` each, or per-file counts."""

    keys: np.ndarray
    files: np.ndarray
    rows: np.ndarray
    written: int

    @classmethod
    def empty(cls) -> Boundary:
        return cls(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)


CANDIDATE_SCHEMA = pa.schema(
    [
        ("key", pa.float64()),
        ("file", pa.int64()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("ecle", pa.float32()),
        ("proximity", pa.float32()),
        ("nn_distance", pa.float32()),  # null in an output scored without it
        ("label", pa.string()),
    ]
)


CHUNK_ROWS = 1 << 16  # the candidates pass computes keys over this many rows of consecutive files at once


def _candidate_table(
    keys: np.ndarray, files: np.ndarray, rows: np.ndarray, sub: pa.Table, nn: bool
) -> pa.Table:
    n = len(keys)
    return pa.table(
        {
            "key": pa.array(keys, pa.float64()),
            "file": pa.array(files, pa.int64()),
            "row": pa.array(rows, pa.int64()),
            "id": sub.column("id").cast(pa.string()),
            "ecle": sub.column("ecle").cast(pa.float32()),
            "proximity": sub.column("proximity").cast(pa.float32()),
            "nn_distance": sub.column("nn_distance").cast(pa.float32()) if nn else pa.nulls(n, pa.float32()),
            "label": sub.column("label").cast(pa.string()),
        },
        schema=CANDIDATE_SCHEMA,
    )


def _chunks(files: list[str], first_file: int, columns: list[str]) -> Iterator[_Chunk]:
    """The usable rows of consecutive files, about ``CHUNK_ROWS`` at a time, with each file left open (its
    embedding column is read only if it holds a candidate)."""
    with contextlib.ExitStack() as stack:
        chunk = _Chunk()
        for offset, uri in enumerate(files):
            fs, path = storage.filesystem(uri)
            pf = pq.ParquetFile(stack.enter_context(fs.open_input_file(path)))
            table, rows = _usable(pf.read(columns=columns, use_threads=False))
            chunk.add(first_file + offset, pf, table, rows)
            if chunk.size >= CHUNK_ROWS or offset == len(files) - 1:
                yield chunk
                chunk = _Chunk()
                stack.close()


@dataclass
class _Chunk:
    tables: list[pa.Table] = field(default_factory=list)
    files: list[int] = field(default_factory=list)
    readers: list[pq.ParquetFile] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    _embedding: dict[int, np.ndarray] = field(default_factory=dict)  # per file, once read

    def add(self, file_index: int, reader: pq.ParquetFile, table: pa.Table, rows: np.ndarray) -> None:
        self.tables.append(table)
        self.files.append(file_index)
        self.readers.append(reader)
        self.rows.append(rows)
        self.size += table.num_rows

    def columns(self) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The chunk's rows as one table, with each row's file index and row number."""
        lengths = [t.num_rows for t in self.tables]
        return (
            pa.concat_tables(self.tables),
            np.repeat(np.asarray(self.files, np.int64), lengths),
            np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64),
        )

    def embeddings(self, keep: np.ndarray) -> pa.Array:
        """The embeddings of the chunk's rows at positions ``keep`` (ascending), read from the files that
        hold them (gathered in numpy: Arrow's concatenation of many small fixed-size-list pieces is slow)."""
        ends = np.cumsum([t.num_rows for t in self.tables])
        which = np.searchsorted(ends, keep, side="right")
        parts = []
        for i in np.unique(which):
            local = keep[which == i] - (ends[i - 1] if i else 0)
            if i not in self._embedding:
                col = self.readers[i].read(columns=["embedding"], use_threads=False)["embedding"]
                self._embedding[i] = _matrix(col)
            parts.append(self._embedding[i][self.rows[i][local]])
        flat = np.concatenate(parts).ravel()
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), parts[0].shape[1])


def _matrix(col: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as a ``[rows, size]`` array of its value type (null lists hold their slots)."""
    size = col.type.list_size
    mats = []
    for arr in col.chunks:
        flat = arr.values.slice(arr.offset * size, len(arr) * size).to_numpy(zero_copy_only=False)
        mats.append(flat.reshape(len(arr), size))
    return mats[0] if len(mats) == 1 else np.concatenate(mats)


def candidates_pass(files: list[str], first_file: int, plans: list[CandidatePlan]) -> list[Boundary]:
    """Write each method's candidate rows of these files (file indices from ``first_file``) and return each
    method's boundary rows (``Boundary.written``: how many rows the task wrote for it)."""
    nn = ["nn_distance"] if any(p.with_nn for p in plans) else []
    columns = list(
        dict.fromkeys(
            ["id", "ecle", "proximity", "label", *nn, *key_columns([p.spec for p in plans]), "error"]
        )
    )
    parts: list[list[pa.Table]] = [[] for _ in plans]
    bounds: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in plans]
    for chunk in _chunks(files, first_file, columns):
        table, file_of, row_of = chunk.columns()
        for i, plan in enumerate(plans):
            keys = plan.spec.keys(table)
            keep = np.flatnonzero(keys >= plan.lo)
            if not len(keep):
                continue
            t = _candidate_table(
                keys[keep], file_of[keep], row_of[keep], table.take(pa.array(keep)), bool(nn)
            )
            if plan.with_embedding:
                t = t.append_column("embedding", chunk.embeddings(keep))
            parts[i].append(t)
            edge = keep[keys[keep] < plan.hi]
            bounds[i].append((keys[edge], file_of[edge], row_of[edge]))
    out = []
    for i, plan in enumerate(plans):
        written = sum(t.num_rows for t in parts[i])
        if parts[i]:
            storage.write_parquet(pa.concat_tables(parts[i]), plan.out_uri)
        if not bounds[i]:
            out.append(Boundary.empty())
            continue
        keys = np.concatenate([b[0] for b in bounds[i]])
        f = np.concatenate([b[1] for b in bounds[i]])
        r = np.concatenate([b[2] for b in bounds[i]])
        if plan.boundary_counts_only:  # every boundary key is equal: per-file counts are all the cut needs
            uniq, counts = np.unique(f, return_counts=True)
            out.append(Boundary(np.zeros(0), uniq, counts, written))
        else:
            out.append(Boundary(keys, f, r, written))
    return out


def boundary_rows_of_file(uri: str, spec: KeySpec, lo: float, hi: float) -> np.ndarray:
    """Row numbers, in order, of one file's usable rows whose key lies in ``[lo, hi)``."""
    table, rows = read_usable(uri, spec.columns)
    keys = spec.keys(table)
    return rows[(keys >= lo) & (keys < hi)]
