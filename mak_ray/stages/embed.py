"""Stage ``embed_target``: clean-view embeddings of the target set and its K-means centroids."""

from __future__ import annotations

import numpy as np

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.mak import fit_centroids
    from mak_ray.score import embed_images, load_valid_embeddings

    out = layout.target_embeddings
    embed_images(cfg.data.target, cfg, layout.pretrain.model, out)
    emb = load_valid_embeddings(out.root)
    if len(emb) < cfg.score.centroids:
        raise ValueError(
            f"the target set has {len(emb)} usable images, fewer than score.centroids={cfg.score.centroids}"
        )
    centroids = fit_centroids(emb, k=cfg.score.centroids, seed=cfg.run.seed)
    storage.write_npy(layout.centroids, centroids.astype(np.float32))
    return {"target_images": int(len(emb))}
