"""Stage ``retrain``: SimCLR on the target set plus each method's selection, same budget and seed."""

from __future__ import annotations

import logging

from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout, done, mark_done, read_done

log = logging.getLogger(__name__)


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.select.output import read_selection_ids
    from mak_ray.train.dataset import training_dataset
    from mak_ray.train.trainer import train_simclr

    target_images = read_done(layout.stage_dir("embed_target"))["target_images"]
    summary = {}
    for method in cfg.select.methods:
        out = layout.retrain(method)
        if done(out.root):
            log.info("retrain/%s: complete, skipped", method)
            summary[method] = read_done(out.root)
            continue
        ids = read_selection_ids(layout.selection(method))
        ds = training_dataset(cfg, cfg.data.target, extra_pool_ids=ids, scores=layout.scores)
        rows, expected = ds.count(), target_images + len(ids)
        if rows != expected:
            raise RuntimeError(
                f"retrain/{method}: {rows} training images, expected {target_images} target + "
                f"{len(ids)} selected"
            )
        init = layout.pretrain.model if cfg.retrain.from_pretrained else (cfg.model.init_checkpoint or None)
        model_uri = train_simclr(cfg, cfg.retrain, ds, out, num_rows=rows, init_model=init)
        summary[method] = {"model": model_uri, "added": len(ids), "images": rows}
        mark_done(out.root, summary[method])
    return summary
