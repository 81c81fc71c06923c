"""Stage ``score``: the pool through the scoring actors (ECLE, embedding, proximity and nearest-target distance
per image), then the label-free diagnostics of how far the model separates the pool from the target."""

from __future__ import annotations

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.score import load_valid_embeddings, score_pool
    from mak_ray.score.diagnostics import diagnose

    centroids = storage.read_npy(layout.centroids)
    targets = load_valid_embeddings(layout.target_embeddings.root)
    if len(targets) == 0:
        raise ValueError(
            f"no usable target embeddings under {layout.target_embeddings.root}: rerun the embed_target stage"
        )
    summary = score_pool(cfg, layout.pretrain.model, centroids, layout.scores, layout.bank, targets=targets)
    diag = diagnose(cfg, layout)
    summary["diagnostics"] = {k: diag[k] for k in ("beyond_target_p99", "corr_ecle_proximity", "warnings")}
    storage.write_json(layout.scores.summary, summary)
    return summary
