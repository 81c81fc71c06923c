"""Stage ``retrain``: SimCLR on the target set plus each method's selection, same budget and seed.

What it trains on is fetched once into ``retrain/data/`` (the target set, and each method's selected pool
objects by id), and every method and epoch reads only that: the stage's reading does not depend on the pool's
size.
"""

from __future__ import annotations

import hashlib
import logging

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout, done, mark_done, read_done

log = logging.getLogger(__name__)


def _fetched(layout: RunLayout, name: str, source: str, fetch) -> dict:
    """The fetched set ``name`` and its counts: fetched now unless an earlier run fetched it from the same
    ``source`` (a digest of what it was fetched from: the target's listing, or the selection)."""
    out = layout.retrain_data(name)
    if done(out) and read_done(out).get("source") == source:
        return read_done(out)
    storage.delete(out)  # an interrupted fetch, or one of an earlier selection or target set
    info = {**fetch(out), "source": source}
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
    target_plan = plan_for(cfg, cfg.data.target)
    source = f"{target_plan.digest}:{cfg.data.image_size}:{cfg.data.max_pixels}"
    target = _fetched(layout, "target", source, lambda out: fetch_target(cfg, target_plan, out))
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
        source = hashlib.sha256(storage.read_bytes(sel.parquet)).hexdigest()[:32] + f":{pool.digest}"
        picked = _fetched(
            layout, method, source, lambda d, s=sel, p=pool: fetch_selection(cfg, s, p, layout.scores, d)
        )
        if picked["usable"] != len(ids):
            raise RuntimeError(
                f"retrain/{method}: {picked['usable']} of {len(ids)} selected images could be read "
                f"({picked['failed']}); the pool changed since scoring"
            )
        rows = target["usable"] + picked["usable"]
        ds = fetched_dataset(cfg, [layout.retrain_data("target"), layout.retrain_data(method)])
        init = layout.pretrain.model if cfg.retrain.from_pretrained else (cfg.model.init_checkpoint or None)
        model_uri = train_simclr(cfg, cfg.retrain, ds, out, num_rows=rows, init_model=init)
        summary[method] = {
            "model": model_uri,
            "added": len(ids),
            "images": rows,
            "fetched_bytes": target["bytes_read"] + picked["bytes_read"],
        }
        mark_done(out.root, summary[method])
    return summary
