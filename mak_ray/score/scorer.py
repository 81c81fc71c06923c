"""The scoring actor: a callable class for ``map_batches`` on an actor pool, holding the model once.

Modes
- ``score``: per valid row, R seeded augmented views -> L2-normalised projections -> ECLE against the negative
  bank; one clean view -> backbone embedding -> proximity to the target centroids.
- ``embed``: the clean-view backbone embedding only (target set, evaluation features).
- ``bank``: the R views' normalised projections ``[R, D]`` per row (to build the negative bank).

Every number depends only on (model, seed, row id, image): views are seeded per id, ECLE draws its negatives
per id, and the model runs in eval mode, so actor count and batch size do not change results.
Failed rows (``error`` set) pass through with null scores and a NaN embedding (written as null).

A call gets a whole block of decoded rows (one shard's rows, or as many as fit Ray's block size) and works
through it ``batch_size`` rows at a time, so the model's working memory is set by ``batch_size`` while
the calls (and, with ``write``, the part files) stay large. With ``write`` the actor writes its own output
(see :mod:`mak_ray.score.parts`) and returns only one small accounting record per file.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mak_ray.data.dataset import _text as _text_or_none
from mak_ray.data.dataset import to_arrow

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mak_ray.config import MakConfig, ScoreSection

FORWARD_CHUNK = 256  # images per model call: bounds activation memory whatever R * batch_size is
TASKS_PER_ACTOR = 2  # shards queued per actor: 1 leaves ~0.15 s idle per shard waiting for dispatch


@dataclass
class ScorerParams:
    model_uri: str
    mode: str  # "score" | "embed" | "bank"
    image_size: int
    views: int = 10
    seed: int = 0
    temperature: float = 0.2
    ecle_batch_size: int = 512
    ecle_repeats: int = 10
    use_gpu: bool = False
    embedding_dtype: str = "float16"
    batch_size: int = 64  # rows per model pass; a call's block is worked through in slices of this many

    @classmethod
    def from_config(cls, cfg: MakConfig, model_uri: str, mode: str) -> ScorerParams:
        """The one mapping from the config to the scorer (a mode ignores the fields it does not use)."""
        sc = cfg.score
        return cls(
            model_uri=model_uri,
            mode=mode,
            image_size=cfg.data.image_size,
            views=sc.views,
            seed=cfg.run.seed,
            temperature=sc.temperature,
            ecle_batch_size=sc.ecle_batch_size,
            ecle_repeats=sc.ecle_repeats,
            use_gpu=sc.gpus_per_actor > 0,
            embedding_dtype=sc.embedding_dtype,
            batch_size=sc.batch_size,
        )


def map_scorer(ds: Any, cfg: MakConfig, ctor: dict[str, Any], shards: int | None = None) -> Any:
    """``ds`` (read from ``shards`` shards, when known) through a pool of ``PoolScorer`` actors, as the bank
    and the scoring engine run it: ``min_actors``..``num_actors``, or with ``num_actors=0`` a fixed pool
    sized by :func:`pool_size`, started at once.

    Blocks come whole (``batch_size=None``) and the scorer slices them: a row batch size here would make
    Ray bundle that many fused read tasks into one call (see :mod:`mak_ray.score.pipeline`).
    """
    import ray

    sc = cfg.score
    high = pool_size(sc, ray.cluster_resources(), shards)
    low = sc.min_actors if sc.num_actors else high  # a pool sized to the cluster starts whole
    return ds.map_batches(
        PoolScorer,
        fn_constructor_kwargs=ctor,
        batch_size=None,
        num_cpus=sc.cpus_per_actor,
        num_gpus=sc.gpus_per_actor,
        compute=ray.data.ActorPoolStrategy(
            min_size=low, max_size=high, max_tasks_in_flight_per_actor=TASKS_PER_ACTOR
        ),
    )


def pool_size(sc: ScoreSection, resources: dict[str, float], shards: int | None = None) -> int:
    """``score.num_actors``, or with 0 what the cluster holds now: one actor per ``gpus_per_actor`` of its GPUs
    when scoring on GPUs, else one per CPU (a CPU actor runs one torch thread on one core, whatever
    ``cpus_per_actor`` it reserves); no more than there are ``shards`` to score, no fewer than
    ``min_actors``, and at least 1."""
    if sc.num_actors:
        return sc.num_actors
    if sc.gpus_per_actor > 0:
        n = int(resources.get("GPU", 0) // sc.gpus_per_actor)
    else:
        n = int(resources.get("CPU", 1))
    if shards is not None:
        n = min(n, shards)
    n = max(1, n, sc.min_actors)
    log.info("score.num_actors=0: a pool of %d actors for this cluster", n)
    return n


def _resolve(x: Any) -> Any:
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def max_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PoolScorer:
    """Loads the model once per actor; ``__call__`` maps a batch of decoded rows to output columns."""

    def __init__(
        self, params: dict, bank: Any = None, centroids: Any = None, write: dict | None = None
    ) -> None:
        import torch

        from mak_ray.models import load_model

        self.p = ScorerParams(**params)
        if self.p.mode not in ("score", "embed", "bank"):
            raise ValueError(f"unknown scorer mode {self.p.mode!r}")
        self.device = "cuda" if self.p.use_gpu and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(
                1
            )  # fractional CPUs per actor: one intra-op thread each, no oversubscription
        self.model = load_model(self.p.model_uri, device=self.device)
        self.bank = None if bank is None else np.asarray(_resolve(bank), dtype=np.float32)
        self.centroids = None if centroids is None else np.asarray(_resolve(centroids), dtype=np.float32)
        if self.p.mode == "score" and (self.bank is None or self.centroids is None):
            raise ValueError("score mode needs a negative bank and target centroids")
        self.ecle_batch_size = self.p.ecle_batch_size
        if self.bank is not None and self.bank.shape[1] < self.ecle_batch_size - 1:
            self.ecle_batch_size = self.bank.shape[1] + 1  # a small pool: every bank sample is a negative
        if write is not None and self.p.mode == "bank":
            raise ValueError("bank mode returns its projections; it writes nothing")
        self.write = write  # {"out_uri": ...}: write part files here and return accounting records
        self.ready_at = time.time()
        log.info("scorer (%s) ready on %s, pid %d", self.p.mode, self.device, os.getpid())

    # ------------------------------------------------------------------------------------ model calls

    def _run(self, fn, x) -> np.ndarray:
        import torch

        outs = []
        with torch.inference_mode():
            for s in range(0, x.shape[0], FORWARD_CHUNK):
                outs.append(fn(x[s : s + FORWARD_CHUNK].to(self.device, non_blocking=True)).float().cpu())
        return torch.cat(outs).numpy()

    def projections(self, images: np.ndarray, keys: list[str]) -> np.ndarray:
        """``[R, B, D]`` L2-normalised projections of the seeded views."""
        from mak_ray.augment import seeded_views

        v = seeded_views(images, keys, self.p.views, self.p.seed, self.p.image_size)
        r, b = v.shape[:2]
        z = self._run(self.model, v.reshape(r * b, *v.shape[2:])).reshape(r, b, -1)
        return z / np.maximum(np.linalg.norm(z, axis=2, keepdims=True), 1e-12)

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        from mak_ray.augment import clean_batch

        return self._run(self.model.embed, clean_batch(images, self.p.image_size))

    # ------------------------------------------------------------------------------------ batches

    def __call__(self, batch: dict[str, np.ndarray]):
        n = len(batch["id"])
        step = max(1, self.p.batch_size)
        out = _concat(
            [self._columns({k: v[s : s + step] for k, v in batch.items()}) for s in range(0, max(n, 1), step)]
        )
        if self.write is not None:
            from mak_ray.score.parts import write_parts

            out = write_parts(
                out,
                self.write["out_uri"],
                self.p.mode,
                self.p.embedding_dtype,
                ready_at=self.ready_at,
            )
        return to_arrow(out)

    def _columns(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["id"])
        errors = np.array(
            [_text_or_none(e) for e in batch["error"]], dtype=object
        )  # rows failing here get a reason
        idx = np.flatnonzero([e is None for e in errors])
        images = np.ascontiguousarray(batch["image"][idx])
        keys = [str(k) for k in batch["id"][idx]]
        out: dict[str, Any] = {k: batch[k] for k in ("id", "shard", "row", "shard_rows") if k in batch}
        out["label"] = [_text_or_none(v) for v in batch["label"]]
        out["error"] = errors
        if self.p.mode == "bank":
            z = np.full((n, self.p.views, self._proj_dim()), np.nan, dtype=np.float32)
            if len(idx):
                z[idx] = self.projections(images, keys).transpose(1, 0, 2)
            out["views"] = z
            return out
        emb = np.full((n, self.model.feature_dim), np.nan, dtype=np.float32)
        if len(idx):
            emb[idx] = self.embeddings(images)
            v = emb[idx]
            bad = ~np.isfinite(v).all(axis=1) | ~(np.abs(v) > 0).any(axis=1)
            idx = self._drop_unusable(idx, bad, errors, "unusable_embedding")
        if self.p.mode == "score":
            self._score(batch, idx, emb, errors, out)
        emb[[e is not None for e in errors]] = np.nan
        out["embedding"] = emb.astype(self.p.embedding_dtype)
        out["max_rss"] = np.full(n, max_rss_bytes(), dtype=np.int64)
        return out

    def _score(self, batch, idx, emb, errors, out) -> None:
        from mak_ray.select.ecle import ecle
        from mak_ray.select.proximity import proximity

        n = len(errors)
        e = np.full(n, np.nan, dtype=np.float32)
        p = np.full(n, np.nan, dtype=np.float32)
        if len(idx):
            images = np.ascontiguousarray(batch["image"][idx])
            keys = [str(k) for k in batch["id"][idx]]
            z = self.projections(images, keys)
            bad = ~np.isfinite(z).all(axis=(0, 2)) | (np.linalg.norm(z, axis=2) == 0).any(axis=0)
            keep = self._drop_unusable(idx, bad, errors, "unusable_projection")
            sel = np.isin(idx, keep)
            idx, z, keys = keep, z[:, sel], [k for k, s in zip(keys, sel) if s]
        if len(idx):
            e[idx] = ecle(
                z,
                self.bank,
                temperature=self.p.temperature,
                batch_size=self.ecle_batch_size,
                repeats=self.p.ecle_repeats,
                seed=self.p.seed,
                keys=keys,
            )
            p[idx] = proximity(emb[idx], self.centroids)
        out["ecle"] = e
        out["proximity"] = p

    @staticmethod
    def _drop_unusable(idx: np.ndarray, bad: np.ndarray, errors: np.ndarray, reason: str) -> np.ndarray:
        """Rows whose model output is non-finite or all zero cannot be normalised: fail them, keep the rest."""
        for i in idx[bad]:
            errors[i] = reason
        return idx[~bad]

    def _proj_dim(self) -> int:
        return int(self.model.head[-1].out_features)


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Column-wise concatenation of ``_columns`` outputs (lists become object arrays)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for k in parts[0]:
        vs = [p[k] if isinstance(p[k], np.ndarray) else np.array(p[k], dtype=object) for p in parts]
        out[k] = np.concatenate(vs)
    return out
