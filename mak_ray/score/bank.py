"""The negative bank for ECLE: R seeded views' projections of a seeded uniform sample of usable pool images.

Drawn from the pool's manifest, never from a list of the pool in the driver, and in rounds until it holds
``score.bank_size`` usable images or the pool runs out (web pools hold dead links and junk: a bank that
shrank with the failure rate would change what ECLE measures):

- image-file pools: manifest rows in the order of a seeded permutation of the rows
  (:func:`mak_ray.data.sampling.permuted`), the next ones each round (the first round ``1.1 * bank_size + 16``,
  later ones what is missing at the usable rate seen so far); the bank is the first ``bank_size`` usable rows
  in that order: a uniform sample of the usable rows.
- tar, Parquet and mixed pools carry no cheap row index, so whole shards are read, ``BANK_SHARDS`` at a time
  in a seeded permutation of the shards, and the bank is the ``bank_size`` usable rows of lowest seeded
  per-id priority among the shards read (a two-stage sample, uniform in expectation).

Usable means the bytes decode; only the chosen rows are projected (one actor pool). The bank is written to
``score/bank.npy`` with what it was drawn with (``bank.json``: the model's digest, seed, views, bank size,
image size, rows drawn and usable) and kept while those hold, so a grown pool keeps its negatives and only its
new shards are scored; ``score.redraw_bank`` draws it again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.data import Plan, image_dataset, keep_rows
from mak_ray.data.listing import MANIFEST_SCHEMA
from mak_ray.data.manifest import take_rows
from mak_ray.data.sampling import permuted
from mak_ray.layout import PlanFolder

log = logging.getLogger(__name__)

BANK_SHARDS = 32
CANDIDATES_PER_SHARD = 256


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0xBA4C]))


def _priority(seed: int, ids: list[str]) -> np.ndarray:
    """A per-id pseudo-random priority: the bank is the usable rows of lowest priority (a seeded uniform sample)."""
    from mak_ray.mak.ecle import keys_to_u64

    return keys_to_u64([f"{seed}:bank:{i}" for i in ids], len(ids))


def _usable(units: pa.Table, parts: list[str], cfg: MakConfig) -> pa.Table:
    """``id``, ``shard`` of the rows of ``units`` that read and decode."""
    ds = keep_rows(image_dataset(units, parts, cfg.data), cfg.data, usable_only=True, columns=["id", "shard"])
    batches = list(ds.iter_batches(batch_size=4096, batch_format="pyarrow"))
    if not batches:
        return pa.table({"id": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
    return pa.concat_tables(batches)


def _sample_units(rows: pa.Table, uri: str, part: int) -> pa.Table:
    """Shard-index rows over a sample file holding ``rows`` (the sample's own shards of image files)."""
    n = rows.num_rows
    starts = list(range(0, n, CANDIDATES_PER_SHARD))
    return pa.table(
        {
            "shard": [f"bank-{i // CANDIDATES_PER_SHARD:05d}" for i in starts],
            "kind": ["files"] * len(starts),
            "part": pa.array([part] * len(starts), pa.int32()),
            "start": pa.array(starts, pa.int64()),
            "stop": pa.array([min(n, s + CANDIDATES_PER_SHARD) for s in starts], pa.int64()),
            "rows": pa.array([min(n, s + CANDIDATES_PER_SHARD) - s for s in starts], pa.int64()),
        }
    )


def _draw_files(cfg: MakConfig, plan: Plan) -> tuple[pa.Table, list[str], dict[str, Any]]:
    """Rounds of permuted manifest rows until ``bank_size`` usable; returns the chosen rows (as the units
    and parts to read them) and what was drawn."""
    sc, seed = cfg.score, cfg.run.seed
    shard_table = plan.shard_table()
    n = plan.objects
    sample_uri = PlanFolder(plan.root).sample("bank-candidates")
    parts = [*plan.part_uris, sample_uri]
    drawn, usable_rows = 0, []
    want = int(math.ceil(sc.bank_size * 1.1)) + 16
    have = 0
    while drawn < n and have < sc.bank_size:
        pos = permuted(seed, n, drawn, want)
        rows = take_rows(plan, shard_table, pos).cast(MANIFEST_SCHEMA)
        storage.write_parquet(rows, sample_uri)
        ok = set(
            _usable(_sample_units(rows, sample_uri, len(parts) - 1), parts, cfg).column("id").to_pylist()
        )
        keep = rows.filter(pc.is_in(rows["id"], value_set=pa.array(sorted(ok), pa.string())))
        usable_rows.append(keep)
        have += keep.num_rows
        drawn += len(pos)
        rate = have / drawn
        want = int(math.ceil((sc.bank_size - have) * 1.1 / max(rate, 1.0 / drawn))) + 16
    chosen = (
        pa.concat_tables(usable_rows).slice(0, sc.bank_size) if usable_rows else MANIFEST_SCHEMA.empty_table()
    )
    storage.write_parquet(chosen, sample_uri)
    return _sample_units(chosen, sample_uri, len(parts) - 1), parts, {"drawn": drawn, "usable": have}


def _draw_shards(cfg: MakConfig, plan: Plan) -> tuple[pa.Table, list[str], dict[str, Any], dict[str, str]]:
    """Rounds of ``BANK_SHARDS`` shards in a seeded permutation until their usable rows hold ``bank_size``;
    returns the shards to read again, the chosen ids with their shard, and what was drawn."""
    sc, seed = cfg.score, cfg.run.seed
    units = plan.shard_table()
    order = _rng(seed).permutation(units.num_rows)
    found: list[pa.Table] = []
    seen: set[str] = set()
    taken = 0
    while taken < len(order) and len(seen) < sc.bank_size:
        idx = np.sort(order[taken : taken + BANK_SHARDS])
        taken += len(idx)
        ok = _usable(units.take(pa.array(idx)), plan.part_uris, cfg)
        found.append(ok)
        seen.update(ok.column("id").to_pylist())
    read = units.take(pa.array(np.sort(order[:taken])))
    ok = pa.concat_tables(found).sort_by([("id", "ascending"), ("shard", "ascending")])
    ids, shards = ok.column("id").to_pylist(), ok.column("shard").to_pylist()
    first: dict[str, str] = {}
    for i, s in zip(ids, shards):  # an id in several shards (Parquet): its copy in the first shard
        first.setdefault(i, s)
    uniq = sorted(first)
    keep = [uniq[i] for i in np.argsort(_priority(seed, uniq), kind="stable")[: sc.bank_size]]
    return read, plan.part_uris, {"drawn_shards": taken, "usable": len(uniq)}, {i: first[i] for i in keep}


def compute_bank(cfg: MakConfig, model_uri: str, plan: Plan) -> tuple[np.ndarray, dict[str, Any]]:
    """``[R, M, D]`` float32 unit projections, M = min(bank_size, usable pool images), and how it was drawn."""
    from mak_ray.score.actors import BankProjector, ScorerParams, map_actors

    sc = cfg.score
    if plan.format == "images":
        units, parts, info = _draw_files(cfg, plan)
        ds = image_dataset(units, parts, cfg.data)
        priority = None
    else:
        units, parts, info, at = _draw_shards(cfg, plan)
        ds = keep_rows(image_dataset(units, parts, cfg.data), cfg.data, at=at)
        priority = True
    ds = map_actors(
        ds,
        cfg,
        BankProjector,
        {"params": asdict(ScorerParams.from_config(cfg, model_uri))},
        shards=units.num_rows,
    )
    ids: list[str] = []
    views: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        ok = np.array([e is None for e in batch["error"]], dtype=bool)
        ids.extend(str(i) for i in batch["id"][ok])
        views.append(np.asarray(batch["views"][ok], dtype=np.float32))
    if not ids:
        raise ValueError(
            f"no usable pool image for the negative bank: none of the {info} drawn rows decoded "
            f"(pool: {plan.uri})"
        )
    z = np.concatenate(views)  # [N, R, D]
    if priority:
        order = np.argsort(_priority(cfg.run.seed, ids), kind="stable")[: sc.bank_size]
    else:  # the permutation's order: rows were read back in sample order within each sample shard
        sample = storage.read_parquet(parts[-1], columns=["id"]).column("id").to_pylist()
        rank = {rid: k for k, rid in enumerate(sample)}
        order = np.argsort([rank[i] for i in ids], kind="stable")[: sc.bank_size]
    bank = np.ascontiguousarray(z[order].transpose(1, 0, 2))
    info.update({"bank_size": int(bank.shape[1])})
    if bank.shape[1] < sc.bank_size:
        log.warning(
            "negative bank has %d samples, fewer than score.bank_size=%d: the pool holds no more usable images",
            bank.shape[1],
            sc.bank_size,
        )
    if bank.shape[1] < 2:
        raise ValueError(f"the negative bank needs at least 2 usable pool images, got {bank.shape[1]}")
    return bank, info


def bank_params(cfg: MakConfig, model_digest: str) -> dict[str, Any]:
    """What a bank depends on; it is kept while these hold (a grown pool does not change them)."""
    return {
        "model": model_digest,
        "seed": cfg.run.seed,
        "views": cfg.score.views,
        "bank_size": cfg.score.bank_size,
        "image_size": cfg.data.image_size,
        "max_pixels": cfg.data.max_pixels,
    }


def load_or_compute_bank(cfg: MakConfig, model_uri: str, plan: Plan, uri: str, info_uri: str) -> np.ndarray:
    """The bank stored at ``uri`` while it belongs to this model and these settings, else a new one drawn,
    computed and written there (with ``info_uri``)."""
    from mak_ray.score.engine import digest_bytes

    params = bank_params(cfg, digest_bytes(storage.read_bytes(model_uri)))
    if storage.exists(uri) and storage.exists(info_uri) and not cfg.score.redraw_bank:
        info = storage.read_json(info_uri)
        if {k: info.get(k) for k in params} == params:
            bank = storage.read_npy(uri)
            log.info("reusing negative bank %s %s (drawn %s)", uri, bank.shape, info.get("drawn"))
            return bank
        changed = sorted(k for k in params if info.get(k) != params[k])
        log.info("negative bank %s was drawn with other %s: drawing a new one", uri, changed)
    elif cfg.score.redraw_bank and storage.exists(uri):
        log.info("score.redraw_bank: drawing a new negative bank")
    bank, drawn = compute_bank(cfg, model_uri, plan)
    storage.write_npy(uri, bank.astype(np.float32))
    storage.write_json(info_uri, {**params, "drawn": drawn, "plan_digest": plan.digest})
    log.info("negative bank %s written to %s (%s)", bank.shape, uri, drawn)
    return bank
