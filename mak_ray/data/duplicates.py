"""Ids repeated across shards: which shard keeps each one.

File and tar ids are URIs and cannot repeat; Parquet inputs carry their own ids, and two files (or two
row-group shards of one file) may share some. Within a shard the reader already fails the second and later
rows of an id (``duplicate_id``). Across shards the rule is the same, in plan order: the first shard that
holds an id keeps it, and every row of that id in a later shard is failed with ``duplicate_id``. So the score
output holds at most one usable row per id, and selection, embedding look-ups and retraining never see an id
twice.

Finding them is a two-level hash shuffle on Ray tasks that reads only the id columns: each shard task hashes
its distinct ids to 128 bits and splits them into buckets; bucket ``b`` of every shard goes to reducer
``b``, which returns the hashes held by more than one shard with the first such shard. No process holds
more than one bucket, and what comes back to the driver is only the repeated ids' hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray.config import DataSection
from mak_ray.data.readers import iter_parquet_ids
from mak_ray.data.sources import UNIT_COLUMNS, load_shard

log = logging.getLogger(__name__)

SHARDS_PER_BUCKET = 8  # a reducer holds about this many shards' id hashes (~40 B per id)
MAX_BUCKETS = 256
MANY_DUPLICATES = 1_000_000  # warn: the owner map travels with every read task


def id_digest(rid: str) -> bytes:
    """128-bit hash of an id (a false match needs ~2^64 ids)."""
    return hashlib.blake2b(rid.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _as_pairs(digests: list[bytes]) -> np.ndarray:
    """``[n, 2]`` uint64 view of 16-byte digests."""
    return np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)


def _shard_buckets(unit: dict, parts: list[str], data: dict, buckets: int) -> list[np.ndarray] | np.ndarray:
    """The distinct id hashes of one shard, split into ``buckets`` by the hash's low word (one Ray return
    each; a single bucket is returned bare, as Ray passes one return through whole)."""
    s, d = load_shard(unit, parts), DataSection(**data)
    seen = {id_digest(rid) for path in s.paths for rid in iter_parquet_ids(path, d, s.row_groups)}
    pairs = _as_pairs(list(seen)) if seen else np.zeros((0, 2), np.uint64)  # the reducer sorts
    which = pairs[:, 1] % np.uint64(buckets)
    out = [pairs[which == b] for b in range(buckets)]
    return out if buckets > 1 else out[0]


def _repeated(*parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes present in more than one shard's part, with the index of the first shard holding each."""
    sizes = [len(p) for p in parts]
    if sum(sizes) == 0:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    pairs = np.concatenate(parts)
    shard = np.repeat(np.arange(len(parts)), sizes)
    order = np.lexsort((shard, pairs[:, 1], pairs[:, 0]))  # by hash, then shard: first holder leads
    pairs, shard = pairs[order], shard[order]
    new = np.ones(len(pairs), bool)
    new[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(pairs)))
    rep = starts[counts > 1]
    return pairs[rep], shard[rep]


def cross_shard_owners(units: pa.Table, parts: list[str], data: DataSection) -> dict[bytes, str]:
    """``{id_digest: shard id of the first shard holding it}`` for ids held by more than one Parquet shard of
    ``units`` (the shard index, in plan order).

    Empty (and nothing is read) unless there are at least two Parquet shards.
    """
    table = units.filter(pc.equal(units["kind"], "parquet")).select(list(UNIT_COLUMNS))
    if table.num_rows < 2:
        return {}
    parquet = table.to_pylist()
    import ray

    t0 = time.perf_counter()
    buckets = int(min(MAX_BUCKETS, -(-len(parquet) // SHARDS_PER_BUCKET)))
    mapper = ray.remote(_shard_buckets).options(num_cpus=data.read_cpus, num_returns=buckets)
    reducer = ray.remote(_repeated).options(num_cpus=data.read_cpus, num_returns=2)
    data_dict = dataclasses.asdict(data)
    parts_ref = ray.put(list(parts))
    mapped = [mapper.remote(u, parts_ref, data_dict, buckets) for u in parquet]
    if buckets == 1:
        mapped = [[p] for p in mapped]
    found = [reducer.remote(*[p[b] for p in mapped]) for b in range(buckets)]
    owners: dict[bytes, str] = {}
    results = ray.get([r for pair in found for r in pair])
    for pairs, first in zip(results[0::2], results[1::2]):
        raw = pairs.tobytes()
        for k, i in enumerate(first):
            owners[raw[16 * k : 16 * (k + 1)]] = parquet[int(i)]["shard"]
    log.info(
        "%d ids appear in more than one of %d Parquet shards (checked in %.1f s); "
        "the first shard keeps each, later rows fail with duplicate_id",
        len(owners),
        len(parquet),
        time.perf_counter() - t0,
    )
    if len(owners) >= MANY_DUPLICATES:
        log.warning("%d ids repeat across Parquet files: is data.id_column really an id?", len(owners))
    return owners
