"""The negative bank for ECLE: R seeded views' projections of a uniform random sample of the pool.

Computed once per run with the same model and augmentations as scoring, written to the run's ``score/bank.npy`` and
reused on rerun (so a resumed run scores against the same negatives), then shared with the actors through
the object store.

Sampling: for image-file pools the sample is exactly uniform over files (chosen from the listing, no reads).
Tar and Parquet pools carry no cheap row index, so a uniform random subset of up to ``BANK_SHARDS`` shards is
read and a uniform sample of their usable rows is taken (a two-stage sample, uniform in expectation).
Rows that fail to decode are skipped; a few extra candidates are drawn to make up for them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

import numpy as np

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.data import Shard, image_dataset, keep_rows

log = logging.getLogger(__name__)

BANK_SHARDS = 32
_CANDIDATES_PER_SHARD = 256


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0xBA4C]))


def _priority(seed: int, ids: list[str]) -> np.ndarray:
    """A per-id pseudo-random priority: the bank is the usable rows of lowest priority (a seeded uniform sample)."""
    from mak_ray.mak.ecle import keys_to_u64

    return keys_to_u64([f"{seed}:bank:{i}" for i in ids], len(ids))


def _candidate_shards(cfg: MakConfig, shards: list[Shard], want: int) -> tuple[list[Shard], set[str] | None]:
    """Shards to read for the bank, and (tar/Parquet) the set of ids to keep from them (None: keep all)."""
    rng = _rng(cfg.run.seed)
    if all(s.kind == "files" for s in shards):
        paths = [(p, (s.labels or [None] * len(s.paths))[i]) for s in shards for i, p in enumerate(s.paths)]
        chosen = sorted(rng.choice(len(paths), size=min(want, len(paths)), replace=False).tolist())
        picked = [paths[i] for i in chosen]
        out = []
        for j in range(0, len(picked), _CANDIDATES_PER_SHARD):
            part = picked[j : j + _CANDIDATES_PER_SHARD]
            out.append(
                Shard(
                    f"bank-{j // _CANDIDATES_PER_SHARD:05d}",
                    "files",
                    [p for p, _ in part],
                    [lab for _, lab in part],
                )
            )
        return out, None
    order = rng.permutation(len(shards))[:BANK_SHARDS]
    subset = [shards[i] for i in sorted(order.tolist())]
    ids_ds = keep_rows(image_dataset(subset, cfg.data), cfg.data, usable_only=True, columns=["id"])
    ids: list[str] = []
    for batch in ids_ds.iter_batches(batch_size=4096, batch_format="pyarrow"):
        ids.extend(batch["id"].to_pylist())
    ids = sorted(set(ids))
    pri = _priority(cfg.run.seed, ids)
    keep = {ids[i] for i in np.argsort(pri, kind="stable")[:want]}
    return subset, keep


def compute_bank(cfg: MakConfig, model_uri: str, shards: list[Shard]) -> np.ndarray:
    """``[R, M, D]`` float32 unit projections, M = min(bank_size, usable sampled rows)."""
    from mak_ray.score.actors import BankProjector, ScorerParams, map_actors

    sc = cfg.score
    want = int(math.ceil(sc.bank_size * 1.1)) + 16  # slack for rows that fail to decode
    cand, keep = _candidate_shards(cfg, shards, want)
    ds = image_dataset(cand, cfg.data)
    if keep is not None:
        ds = keep_rows(ds, cfg.data, ids=sorted(keep))
    ds = map_actors(
        ds, cfg, BankProjector, {"params": asdict(ScorerParams.from_config(cfg, model_uri))}, shards=len(cand)
    )
    ids: list[str] = []
    views: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        ok = np.array([e is None for e in batch["error"]], dtype=bool)
        ids.extend(str(i) for i in batch["id"][ok])
        views.append(np.asarray(batch["views"][ok], dtype=np.float32))
    if not ids:
        raise ValueError("no usable pool image for the negative bank: every sampled row failed to decode")
    z = np.concatenate(views)  # [N, R, D]
    order = np.argsort(_priority(cfg.run.seed, ids), kind="stable")[: sc.bank_size]
    bank = np.ascontiguousarray(z[order].transpose(1, 0, 2))
    if bank.shape[1] < sc.bank_size:
        log.warning(
            "negative bank has %d samples, fewer than score.bank_size=%d (small pool)",
            bank.shape[1],
            sc.bank_size,
        )
    if bank.shape[1] < 2:
        raise ValueError(f"the negative bank needs at least 2 usable pool images, got {bank.shape[1]}")
    return bank


def load_or_compute_bank(cfg: MakConfig, model_uri: str, shards: list[Shard], uri: str) -> np.ndarray:
    """The bank stored at ``uri``, or a new one drawn, computed and written there."""
    if storage.exists(uri):
        bank = storage.read_npy(uri)
        if bank.ndim != 3 or bank.shape[0] != cfg.score.views:
            raise ValueError(
                f"{uri} has shape {bank.shape}, not [{cfg.score.views}, M, D]: it belongs to another "
                "configuration; use a fresh output URI"
            )
        log.info("reusing negative bank %s %s", uri, bank.shape)
        return bank
    bank = compute_bank(cfg, model_uri, shards)
    storage.write_npy(uri, bank.astype(np.float32))
    log.info("negative bank %s written to %s", bank.shape, uri)
    return bank
