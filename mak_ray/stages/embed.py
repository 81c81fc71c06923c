"""Stage ``embed_target``: clean-view embeddings of the target set, its K-means centroids, and the target's
own distance distributions (the reference the gate of ``mak_gated`` and the score diagnostics read)."""

from __future__ import annotations

import numpy as np

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.mak import fit_centroids, leave_one_out_nn, proximity, quantile_table
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
    loo = leave_one_out_nn(emb, seed=cfg.run.seed)
    storage.write_json(
        layout.target_reference,
        {
            "images": int(len(emb)),
            "nn_queries": int(len(loo)),
            "nn_distance": quantile_table(loo),
            "proximity": quantile_table(proximity(emb, centroids)),
        },
    )
    return {"target_images": int(len(emb))}
