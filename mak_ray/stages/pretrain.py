"""Stage ``pretrain``: SimCLR on the target set (Ray Train)."""

from __future__ import annotations

from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.train.dataset import training_dataset
    from mak_ray.train.trainer import train_simclr

    model_uri = train_simclr(
        cfg,
        cfg.pretrain,
        training_dataset(cfg, cfg.data.target),
        layout.pretrain,
        init_model=cfg.model.init_checkpoint or None,
    )
    return {"model": model_uri}
