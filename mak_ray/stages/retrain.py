"""Stage ``retrain``: SimCLR on the target set plus each method's selection, same budget and seed.

What it trains on is fetched once into ``retrain/data/`` (the target set, and each method's selected pool
objects by id), and every method and epoch reads only that: the stage's reading does not depend on the pool's
size.
"""

from __future__ import annotations

import logging

from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout, done, mark_done, read_done

log = logging.getLogger(__name__)


def _fetched(layout: RunLayout, name: str, fetch) -> dict:
    """The fetched set ``name`` (fetched now unless an earlier run finished it) and its counts."""
    out = layout.retrain_data(name)
    if done(out):
        return read_done(out)
    from mak_ray import storage

    storage.delete(out)  # the parts of an interrupted fetch
    info = fetch(out)
    mark_done(out, info)
    log.info("retrain data %s: %s", name, info)
    return info


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.data import read_plan
    from mak_ray.data.manifest import plan_for
    from mak_ray.select.output import read_selection_ids
    from mak_ray.train.dataset import fetch_selection, fetch_target, fetched_dataset
    from mak_ray.train.trainer import train_simclr

    target_images = read_done(layout.stage_dir("embed_target"))["target_images"]
    target = _fetched(layout, "target", lambda out: fetch_target(cfg, out))
    if target["usable"] != target_images:
        raise RuntimeError(
            f"retrain: the target set has {target['usable']} usable images now, {target_images} when it was "
            "embedded: it changed since; rerun from embed_target"
        )
    pool = None
    summary = {}
    for method in cfg.select.methods:
        out = layout.retrain(method)
        if done(out.root):
            log.info("retrain/%s: complete, skipped", method)
            summary[method] = read_done(out.root)
            continue
        ids = read_selection_ids(layout.selection(method))
        if pool is None:
            pool = read_plan(layout.plan("pool")) or plan_for(cfg, cfg.data.pool)
        sel = layout.selection(method)
        picked = _fetched(
            layout, method, lambda d, s=sel, p=pool: fetch_selection(cfg, s, p, layout.scores, d)
        )
        if picked["usable"] != len(ids):
            raise RuntimeError(
                f"retrain/{method}: {picked['usable']} of {len(ids)} selected images could be read "
                f"({picked['failed']}); the pool changed since scoring"
            )
        rows = target["usable"] + picked["usable"]
        ds = fetched_dataset(cfg, [layout.retrain_data("target"), layout.retrain_data(method)])
        init = layout.pretrain.model if cfg.retrain.from_pretrained else None
        model_uri = train_simclr(cfg, cfg.retrain, ds, out, num_rows=rows, init_model=init)
        summary[method] = {
            "model": model_uri,
            "added": len(ids),
            "images": rows,
            "fetched_bytes": target["bytes_read"] + picked["bytes_read"],
        }
        mark_done(out.root, summary[method])
    return summary
