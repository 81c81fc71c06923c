"""Stage ``evaluate``: linear probe and few-shot on frozen features of every model (target-only and each
retrained one): many / medium / few accuracy and their spread."""

from __future__ import annotations

import logging

import pyarrow.compute as pc

from mak_ray import storage
from mak_ray.config import MakConfig
from mak_ray.layout import RunLayout, done, mark_done
from mak_ray.registry import TARGET_ONLY

log = logging.getLogger(__name__)


def evaluated_models(cfg: MakConfig, layout: RunLayout) -> dict[str, str]:
    """Model name -> model URI for every model that this stage scores."""
    models = {TARGET_ONLY: layout.pretrain.model}
    models.update({m: layout.retrain(m).model for m in cfg.select.methods})
    return models


def target_class_counts(layout: RunLayout) -> dict[str, int]:
    """Per-class image counts of the target set (labels from its embedding output; for grouping only)."""
    table = storage.read_parquet(layout.target_embeddings.root, columns=["label", "error"])
    table = table.filter(pc.is_null(table["error"]))
    counts = pc.value_counts(table["label"]).to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in counts if c["values"] is not None}


def run(cfg: MakConfig, layout: RunLayout) -> dict:
    from mak_ray.evaluate import evaluate_features, write_results
    from mak_ray.score import embed_images

    if not (cfg.data.eval_train and cfg.data.eval_test):
        raise ValueError("evaluate needs data.eval_train and data.eval_test (labelled, balanced sets)")
    counts = target_class_counts(layout)
    evaluated = []
    for name, model_uri in evaluated_models(cfg, layout).items():
        result_dir = layout.evaluation(name)
        evaluated.append(name)
        if done(result_dir):
            log.info("evaluate/%s: complete, skipped", name)
            continue
        tables = {}
        for split, src in (("train", cfg.data.eval_train), ("test", cfg.data.eval_test)):
            emb = layout.eval_embeddings(name, split)
            embed_images(src, cfg, model_uri, emb)
            tables[split] = storage.read_parquet(emb.root, columns=["id", "label", "embedding", "error"])
        results = evaluate_features(tables["train"], tables["test"], counts, cfg.evaluate, cfg.run.seed)
        results["model"] = name
        write_results(results, layout.metrics_json(name), layout.metrics_md(name), name)
        mark_done(result_dir)
    return {"models": evaluated}
