"""Streaming readers of a score/embed output, so no process ever holds the whole pool's embeddings, and the
grouping of its part files into Ray tasks whose small results the driver merges as they finish (the select
stage's passes and the score diagnostics)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mak_ray import storage


def part_files(out_uri: str) -> list[str]:
    """The output's Parquet part files in a stable order (shard, then part name)."""
    return storage.list_files(out_uri, (".parquet",))


def _open(uri: str) -> pq.ParquetFile:
    fs, path = storage.filesystem(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def iter_score_columns(
    out_uri: str, columns: Sequence[str], batch_rows: int = 65536
) -> Iterator[pa.RecordBatch]:
    """Record batches of only ``columns`` over every part file; memory is bounded by ``batch_rows``."""
    for uri in part_files(out_uri):
        yield from _open(uri).iter_batches(batch_size=batch_rows, columns=list(columns))


def _as_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else len(arr[0])
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), dim).astype(np.float32)


def load_embeddings(out_uri: str, ids: Sequence[str]) -> np.ndarray:
    """float32 ``[len(ids), D]`` embeddings of ``ids`` (usable rows only), in the order of ``ids``.

    Reads the id and error columns of every part, and the embedding column only of parts holding a wanted id.
    Raises if an id has no usable row.
    """
    wanted = pa.array([str(i) for i in ids], pa.string())
    pos = {str(i): k for k, i in enumerate(ids)}
    out: np.ndarray | None = None
    found = np.zeros(len(ids), dtype=bool)
    for uri in part_files(out_uri):
        pf = _open(uri)
        head = pf.read(columns=["id", "error"])
        mask = pc.and_(pc.is_in(head["id"], value_set=wanted), pc.is_null(head["error"]))
        if not pc.any(mask).as_py():
            continue
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        emb = _as_matrix(pf.read(columns=["embedding"])["embedding"].take(pa.array(rows)))
        if out is None:
            out = np.zeros((len(ids), emb.shape[1]), dtype=np.float32)
        for r, e in zip(head["id"].take(pa.array(rows)).to_pylist(), emb):
            out[pos[r]] = e
            found[pos[r]] = True
    if not found.all():
        missing = [ids[i] for i in np.flatnonzero(~found)[:3]]
        raise KeyError(f"{int((~found).sum())} ids have no usable embedding in {out_uri}, e.g. {missing}")
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def load_valid_embeddings(out_uri: str, with_ids: bool = False):
    """All usable embeddings of an output, float32 ``[N, D]`` (for small sets: the target, evaluation sets).

    With ``with_ids``, returns ``(ids, labels, embeddings)``, rows ordered by id.
    """
    ids: list[str] = []
    labels: list[str | None] = []
    mats: list[np.ndarray] = []
    for batch in iter_score_columns(out_uri, ["id", "label", "embedding", "error"]):
        keep = pc.is_null(batch.column("error"))
        b = batch.filter(keep)
        if b.num_rows == 0:
            continue
        ids.extend(b.column("id").to_pylist())
        labels.extend(b.column("label").to_pylist())
        mats.append(_as_matrix(b.column("embedding")))
    emb = np.concatenate(mats) if mats else np.zeros((0, 0), dtype=np.float32)
    if not with_ids:
        return emb
    order = np.argsort(np.array(ids, dtype=object), kind="stable") if ids else np.zeros(0, dtype=np.int64)
    return [ids[i] for i in order], [labels[i] for i in order], emb[order]


# ------------------------------------------------------------------------------------------- tasks

FILES_PER_TASK = 64
TASKS_PER_CPU = 2


def file_groups(files: list[str], cpus: int) -> list[tuple[int, list[str]]]:
    """Consecutive runs of part files, one per task: ``(index of the first file, files)``; enough runs to keep
    every CPU busy, none longer than ``FILES_PER_TASK``."""
    if not files:
        return []
    n = min(len(files), max(TASKS_PER_CPU * cpus, math.ceil(len(files) / FILES_PER_TASK)))
    bounds = np.linspace(0, len(files), n + 1).astype(int)
    return [(int(a), files[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def merged(refs: list[Any], merge: Callable[[Any, Any], Any]) -> Any:
    """Merge task results as they finish, so the driver holds one partial result, not all of them."""
    import ray

    acc = None
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        part = ray.get(ready[0])
        acc = part if acc is None else merge(acc, part)
    return acc
