"""The model actors of the scoring engine: callable classes for ``map_batches`` on an actor pool.

All three load the model once per actor (:class:`ModelActor`) and differ only in what they compute per row:

- :class:`Embedder`: the clean-view backbone embedding (target set, evaluation sets);
- :class:`Scorer`: the embedding plus, from R seeded augmented views, L2-normalised projections -> ECLE against
  the negative bank, and the embedding's proximity to the target centroids and distance to the nearest target
  image (``nn_distance``);
- :class:`BankProjector`: the R views' normalised projections ``[R, D]`` per row (to build the negative bank).

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

from mak_ray.data.dataset import text_or_none, to_arrow
from mak_ray.layout import ShardedOutput

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mak_ray.config import MakConfig, ScoreSection

FORWARD_CHUNK = 256  # images per model call: bounds activation memory whatever R * batch_size is
TASKS_PER_ACTOR = 2  # shards queued per actor: 1 leaves ~0.15 s idle per shard waiting for dispatch


@dataclass
class ScorerParams:
    """What a model actor needs from the config (an actor ignores the fields it does not use)."""

    model_uri: str
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
    def from_config(cls, cfg: MakConfig, model_uri: str) -> ScorerParams:
        """The one mapping from the config to the model actors."""
        sc = cfg.score
        return cls(
            model_uri=model_uri,
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


def map_actors(
    ds: Any, cfg: MakConfig, actor: type[ModelActor], ctor: dict[str, Any], shards: int | None = None
) -> Any:
    """``ds`` (read from ``shards`` shards, when known) through a pool of ``actor`` actors, as the bank and the
    scoring engine run it: ``min_actors``..``num_actors``, or with ``num_actors=0`` a fixed pool
    sized by :func:`pool_size`, started at once.

    Blocks come whole (``batch_size=None``) and the scorer slices them: a row batch size here would make
    Ray bundle that many fused read tasks into one call (see :mod:`mak_ray.score.engine`).
    """
    import ray

    sc = cfg.score
    high = pool_size(sc, ray.cluster_resources(), shards)
    low = sc.min_actors if sc.num_actors else high  # a pool sized to the cluster starts whole
    return ds.map_batches(
        actor,
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


class ModelActor:
    """Loads the model once per actor onto its device (:class:`mak_ray.score.device.DeviceScorer`);
    ``__call__`` slices a block into ``batch_size`` rows, runs the slices through the device (two in flight),
    maps each slice's results to output columns with :meth:`columns`, and writes part files when asked to."""

    MODE = ""  # the DeviceScorer mode this actor runs: "embed", "score" or "bank"

    def __init__(
        self,
        params: dict,
        write: dict | None = None,
        bank: Any = None,
        centroids: Any = None,
        targets: Any = None,
    ) -> None:
        import torch

        from mak_ray.models import load_model
        from mak_ray.score.device import DeviceParams, DeviceScorer, pick_device

        self.p = ScorerParams(**params)
        self.device = pick_device(self.p.use_gpu)
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # fractional CPUs per actor: one intra-op thread each
        self.engine = DeviceScorer(
            load_model(self.p.model_uri, device=self.device),
            DeviceParams(
                image_size=self.p.image_size,
                views=self.p.views,
                seed=self.p.seed,
                temperature=self.p.temperature,
                ecle_batch_size=self.p.ecle_batch_size,
                ecle_repeats=self.p.ecle_repeats,
                forward_chunk=FORWARD_CHUNK,
            ),
            self.device,
            bank=bank,
            centroids=centroids,
            targets=targets,
        )
        self.model = self.engine.model
        self.write = None if write is None else ShardedOutput(write["out_uri"])
        self.ready_at = time.time()
        log.info("%s ready on %s, pid %d", type(self).__name__, self.device, os.getpid())

    def __call__(self, batch: dict[str, np.ndarray]):
        n = len(batch["id"])
        step = max(1, self.p.batch_size)
        slices = [{k: v[s : s + step] for k, v in batch.items()} for s in range(0, max(n, 1), step)]
        errors = [np.array([text_or_none(e) for e in b["error"]], dtype=object) for b in slices]
        usable = [self.usable(e) for e in errors]
        results = self.engine.run(
            ((b["image"][i], [str(k) for k in b["id"][i]]) for b, i in zip(slices, usable)), self.MODE
        )
        out = _concat([self._slice(*args) for args in zip(slices, errors, usable, results)])
        if self.write is not None:
            from mak_ray.score.parts import write_parts

            out = write_parts(out, self.write, self.p.embedding_dtype, ready_at=self.ready_at)
        return to_arrow(out)

    def _slice(
        self, batch: dict[str, np.ndarray], errors: np.ndarray, idx: np.ndarray, r: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: batch[k] for k in ("id", "shard", "row", "shard_rows", "object_version") if k in batch
        }
        out["label"] = [text_or_none(v) for v in batch["label"]]
        out["error"] = errors  # rows failing here get one
        self.columns(errors, idx, r, out)
        return out

    def columns(
        self, errors: np.ndarray, idx: np.ndarray, r: dict[str, np.ndarray], out: dict[str, Any]
    ) -> None:
        """Add this actor's columns to ``out`` from the device results ``r`` of the usable rows ``idx``; set
        ``errors[i]`` for rows that fail here."""
        raise NotImplementedError

    @staticmethod
    def usable(errors: np.ndarray) -> np.ndarray:
        return np.flatnonzero([e is None for e in errors])

    @staticmethod
    def _drop_unusable(idx: np.ndarray, bad: np.ndarray, errors: np.ndarray, reason: str) -> np.ndarray:
        """Rows whose model output is non-finite or all zero cannot be normalised: fail them, keep the rest."""
        for i in idx[bad]:
            errors[i] = reason
        return idx[~bad]


class Embedder(ModelActor):
    """Clean-view backbone embeddings; a row whose embedding is non-finite or zero fails."""

    MODE = "embed"

    def columns(self, errors, idx, r, out) -> None:
        n = len(errors)
        emb = np.full((n, self.model.feature_dim), np.nan, dtype=np.float32)
        emb[idx] = r["embedding"]
        self._drop_unusable(idx, r["bad_embedding"], errors, "unusable_embedding")
        self.extra(errors, idx, r, out)
        emb[[e is not None for e in errors]] = np.nan
        out["embedding"] = emb.astype(self.p.embedding_dtype)
        out["max_rss"] = np.full(n, max_rss_bytes(), dtype=np.int64)

    def extra(
        self, errors: np.ndarray, idx: np.ndarray, r: dict[str, np.ndarray], out: dict[str, Any]
    ) -> None:
        """Columns a subclass adds from the device results of the usable rows ``idx``."""


class Scorer(Embedder):
    """Embeddings plus ECLE (against the negative bank), proximity (to the target centroids) and
    ``nn_distance`` (to the nearest target image), computed on
    the actor's device; a row with an unusable projection fails."""

    MODE = "score"

    def __init__(
        self, params: dict, bank: Any, centroids: Any, targets: Any, write: dict | None = None
    ) -> None:
        super().__init__(
            params,
            write,
            bank=np.asarray(_resolve(bank), dtype=np.float32),
            centroids=np.asarray(_resolve(centroids), dtype=np.float32),
            targets=np.asarray(_resolve(targets), dtype=np.float32),
        )

    def extra(self, errors, idx, r, out) -> None:
        self._drop_unusable(idx, ~r["bad_embedding"] & r["bad_projection"], errors, "unusable_projection")
        n = len(errors)
        e = np.full(n, np.nan, dtype=np.float32)
        p = np.full(n, np.nan, dtype=np.float32)
        d = np.full(n, np.nan, dtype=np.float32)
        e[idx], p[idx], d[idx] = r["ecle"], r["proximity"], r["nn_distance"]  # NaN where a row is unusable
        out["ecle"] = e
        out["proximity"] = p
        out["nn_distance"] = d


class BankProjector(ModelActor):
    """The R seeded views' normalised projections of each usable row, ``views`` ``[n, R, D]`` (NaN for failed
    rows); it never writes."""

    MODE = "bank"

    def __init__(self, params: dict) -> None:
        super().__init__(params, write=None)

    def columns(self, errors, idx, r, out) -> None:
        z = np.full(
            (len(errors), self.p.views, int(self.model.head[-1].out_features)), np.nan, dtype=np.float32
        )
        z[idx] = r["projections"].transpose(1, 0, 2)
        out["views"] = z


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Column-wise concatenation of ``_columns`` outputs (lists become object arrays)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for k in parts[0]:
        vs = [p[k] if isinstance(p[k], np.ndarray) else np.array(p[k], dtype=object) for p in parts]
        out[k] = np.concatenate(vs)
    return out
