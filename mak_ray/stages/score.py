"""Stage ``score``: the pool through the scoring actors: ECLE, embedding and proximity per image."""

from __future__ import annotations

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.score import score_pool

    centroids = storage.read_npy(layout.centroids)
    return score_pool(cfg, layout.pretrain.model, centroids, layout.scores, layout.bank)
