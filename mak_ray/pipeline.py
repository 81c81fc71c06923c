"""The MAK pipeline as resumable stages that talk only through files under ``run.output_uri``.

Each stage writes its outputs and then a ``_SUCCESS`` marker; a rerun skips every stage whose marker exists,
so a killed pipeline resumes at the first unfinished stage (and the scorer resumes at shard level inside
its stage). The CLI, the Ray jobs and the tests all call :func:`run_stage` / :func:`run_pipeline`.
The layout of the outputs is documented in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from mak_ray import storage
from mak_ray.config import MakConfig, dump_config, load_config, merge_overrides
from mak_ray.runtime import init_ray

log = logging.getLogger(__name__)

STAGES = ("pretrain", "embed_target", "score", "select", "retrain", "evaluate", "report")
TARGET_ONLY = "target_only"


class StageNotBuilt(RuntimeError):
    """A stage whose implementation is not part of this build."""


# ------------------------------------------------------------------------------------------- run layout


def out(cfg: MakConfig, *parts: str) -> str:
    return storage.join(cfg.run.output_uri, *parts)


def done(uri: str) -> bool:
    return storage.exists(storage.join(uri, "_SUCCESS"))


def mark_done(uri: str, info: dict | None = None) -> None:
    storage.write_json(storage.join(uri, "_SUCCESS"), info or {})


def pretrained_model_uri(cfg: MakConfig) -> str:
    return out(cfg, "pretrain", "model.pt")


def retrained_model_uri(cfg: MakConfig, method: str) -> str:
    return out(cfg, "retrain", method, "model.pt")


def evaluated_models(cfg: MakConfig) -> dict[str, str]:
    """Model name -> model URI for every model that the evaluate stage scores."""
    models = {TARGET_ONLY: pretrained_model_uri(cfg)}
    models.update({m: retrained_model_uri(cfg, m) for m in cfg.select.methods})
    return models


def _record_time(cfg: MakConfig, stage: str, seconds: float) -> None:
    uri = out(cfg, "timings.json")
    timings = storage.read_json(uri) if storage.exists(uri) else {"stages": {}}
    timings["stages"][stage] = round(seconds, 2)
    storage.write_json(uri, timings)


# ------------------------------------------------------------------------------------------- stages


def stage_pretrain(cfg: MakConfig) -> str:
    from mak_ray.train.trainer import train_simclr
    from mak_ray.training_data import training_dataset

    stage_dir = out(cfg, "pretrain")
    ds = training_dataset(cfg, cfg.data.target)
    model_uri = train_simclr(cfg, cfg.pretrain, ds, stage_dir, "pretrain")
    mark_done(stage_dir, {"model": model_uri})
    return model_uri


def stage_embed_target(cfg: MakConfig) -> str:
    import numpy as np

    from mak_ray.score import embed_images, load_valid_embeddings
    from mak_ray.select import fit_centroids

    stage_dir = out(cfg, "embed", "target")
    embed_images(cfg.data.target, cfg, pretrained_model_uri(cfg), stage_dir)
    emb = load_valid_embeddings(stage_dir)
    if len(emb) < cfg.score.centroids:
        raise ValueError(
            f"the target set has {len(emb)} usable images, fewer than score.centroids={cfg.score.centroids}"
        )
    centroids = fit_centroids(emb, k=cfg.score.centroids, seed=cfg.run.seed)
    storage.write_npy(storage.join(stage_dir, "centroids.npy"), centroids.astype(np.float32))
    mark_done(stage_dir, {"target_images": int(len(emb))})
    return stage_dir


def stage_score(cfg: MakConfig) -> str:
    from mak_ray.score import score_pool

    stage_dir = out(cfg, "score")
    centroids = storage.read_npy(out(cfg, "embed", "target", "centroids.npy"))
    summary = score_pool(cfg, pretrained_model_uri(cfg), centroids, stage_dir)
    mark_done(stage_dir, summary)
    return stage_dir


def stage_select(cfg: MakConfig) -> str:
    from mak_ray.selection_stage import run_selection

    for method in cfg.select.methods:
        method_dir = out(cfg, "select", method)
        if done(method_dir):
            log.info("select/%s: complete, skipped", method)
            continue
        summary = run_selection(cfg, method, method_dir)
        mark_done(method_dir, summary)
    mark_done(out(cfg, "select"))
    return out(cfg, "select")


def stage_retrain(cfg: MakConfig) -> str:
    from mak_ray.train.trainer import train_simclr
    from mak_ray.training_data import training_dataset

    target_images = storage.read_json(out(cfg, "embed", "target", "_SUCCESS"))["target_images"]
    for method in cfg.select.methods:
        method_dir = out(cfg, "retrain", method)
        if done(method_dir):
            log.info("retrain/%s: complete, skipped", method)
            continue
        ids = storage.read_text(out(cfg, "select", method, "selection.txt")).split()
        ds = training_dataset(cfg, cfg.data.target, extra_pool_ids=ids)
        rows, expected = ds.count(), target_images + len(ids)
        if rows != expected:
            raise RuntimeError(
                f"retrain/{method}: {rows} training images, expected {target_images} target + "
                f"{len(ids)} selected"
            )
        init = pretrained_model_uri(cfg) if cfg.retrain.from_pretrained else None
        model_uri = train_simclr(
            cfg, cfg.retrain, ds, method_dir, f"retrain-{method}", num_rows=rows, init_model=init
        )
        mark_done(method_dir, {"model": model_uri, "added": len(ids), "images": rows})
    mark_done(out(cfg, "retrain"))
    return out(cfg, "retrain")


def stage_evaluate(cfg: MakConfig) -> str:
    from mak_ray.evaluate import evaluate_features, write_results
    from mak_ray.score import embed_images

    if not (cfg.data.eval_train and cfg.data.eval_test):
        raise ValueError("evaluate needs data.eval_train and data.eval_test (labelled, balanced sets)")
    counts = target_class_counts(cfg)
    for name, model_uri in evaluated_models(cfg).items():
        result_dir = out(cfg, "evaluate", name)
        if done(result_dir):
            log.info("evaluate/%s: complete, skipped", name)
            continue
        tables = {}
        for split, src in (("train", cfg.data.eval_train), ("test", cfg.data.eval_test)):
            emb_dir = out(cfg, "embed", "eval", name, split)
            embed_images(src, cfg, model_uri, emb_dir)
            tables[split] = storage.read_parquet(emb_dir, columns=["id", "label", "embedding", "error"])
        results = evaluate_features(tables["train"], tables["test"], counts, cfg.evaluate, cfg.run.seed)
        results["model"] = name
        write_results(results, result_dir, name)
        mark_done(result_dir)
    mark_done(out(cfg, "evaluate"))
    return out(cfg, "evaluate")


def stage_report(cfg: MakConfig) -> str:
    from mak_ray.report import build_report

    write_run_summary(cfg)
    path = build_report(cfg.run.output_uri)
    mark_done(out(cfg, "report"))
    return path


STAGE_FUNCS: dict[str, Callable[[MakConfig], str]] = {
    "pretrain": stage_pretrain,
    "embed_target": stage_embed_target,
    "score": stage_score,
    "select": stage_select,
    "retrain": stage_retrain,
    "evaluate": stage_evaluate,
    "report": stage_report,
}
STAGE_DIRS = {
    "pretrain": ("pretrain",),
    "embed_target": ("embed", "target"),
    "score": ("score",),
    "select": ("select",),
    "retrain": ("retrain",),
    "evaluate": ("evaluate",),
    "report": ("report",),
}


# ------------------------------------------------------------------------------------------- helpers


def target_class_counts(cfg: MakConfig) -> dict[str, int]:
    """Per-class image counts of the target set (labels from its embedding output; for grouping only)."""
    import pyarrow.compute as pc

    table = storage.read_parquet(out(cfg, "embed", "target"), columns=["label", "error"])
    table = table.filter(pc.is_null(table["error"]))
    counts = pc.value_counts(table["label"]).to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in counts if c["values"] is not None}


def write_run_summary(cfg: MakConfig) -> dict:
    """Accounting for the whole run: inputs seen, scored, failed by reason, selected per method."""
    summary: dict = {"output_uri": cfg.run.output_uri}
    score_summary = out(cfg, "score", "summary.json")
    if storage.exists(score_summary):
        s = storage.read_json(score_summary)
        summary.update({k: s.get(k) for k in ("inputs", "scored", "failed", "failed_by_reason")})
    selected = {}
    for method in cfg.select.methods:
        txt = out(cfg, "select", method, "selection.txt")
        if storage.exists(txt):
            selected[method] = len(storage.read_text(txt).split())
    summary["selected"] = selected
    storage.write_json(out(cfg, "summary.json"), summary)
    return summary


# ------------------------------------------------------------------------------------------- preflight

# What each stage reads from earlier stages (beyond the raw data).
NEEDS = {
    "embed_target": ("pretrain",),
    "score": ("pretrain", "embed_target"),
    "select": ("embed_target", "score"),
    "retrain": ("select",),
    "evaluate": ("pretrain", "embed_target", "retrain"),
    "report": (),
}
NEEDS_DATA = {
    "pretrain": ("target",),
    "embed_target": ("target",),
    "score": ("pool",),
    "retrain": ("target", "pool"),
    "evaluate": ("eval_train", "eval_test"),
}


def known_inputs(uri: str, cfg: MakConfig) -> int | None:
    """How many inputs ``uri`` holds, when cheap to know (image files, Parquet row counts); else None."""
    import pyarrow.parquet as pq

    from mak_ray.data import plan_from_config

    total = 0
    for shard in plan_from_config(uri, cfg.data):
        if shard.kind == "files":
            total += len(shard.paths)
        elif shard.kind == "parquet":
            for path in shard.paths:
                fs, p = storage.filesystem(path)
                with fs.open_input_file(p) as f:
                    total += pq.ParquetFile(f).metadata.num_rows
        else:
            return None
    return total


def preflight(cfg: MakConfig, stages: tuple[str, ...]) -> None:
    """Refuse, before any heavy work, a run that cannot finish: missing inputs, earlier outputs or budget."""
    from mak_ray.config import ConfigError

    planned = set(stages)
    for stage in stages:
        for name in NEEDS_DATA.get(stage, ()):
            uri = getattr(cfg.data, name)
            if not uri:
                raise ConfigError(f"data.{name}", f"stage '{stage}' needs it, but it is empty")
            if not storage.exists(uri):
                raise ConfigError(f"data.{name}", f"{uri} does not exist (stage '{stage}' reads it)")
    if {"score", "select"} & planned and not done(out(cfg, "select")):
        try:
            n_pool = (
                known_inputs(cfg.data.pool, cfg) if cfg.data.pool and storage.exists(cfg.data.pool) else None
            )
        except ValueError as e:  # no inputs, mixed formats
            raise ConfigError("data.pool", str(e)) from e
        if n_pool is not None and cfg.select.budget > n_pool:
            raise ConfigError(
                "select.budget", f"{cfg.select.budget} is larger than the pool ({n_pool} images)"
            )
    for stage in stages:
        for need in NEEDS.get(stage, ()):
            if need not in planned and not done(out(cfg, *STAGE_DIRS[need])):
                raise FileNotFoundError(
                    f"stage '{stage}' needs the outputs of stage '{need}', which are not complete under "
                    f"{out(cfg, *STAGE_DIRS[need])}; run `mak-ray {need.replace('_', '-')}` or "
                    "`mak-ray pipeline` first"
                )


# ------------------------------------------------------------------------------------------- drivers


def run_stage(name: str, cfg: MakConfig, *, force: bool = False, checked: bool = False) -> str | None:
    """Run one stage unless its outputs are complete. Returns the stage's output URI."""
    if name == "pipeline":
        return run_pipeline(cfg)
    if name not in STAGE_FUNCS:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    stage_dir = out(cfg, *STAGE_DIRS[name])
    if done(stage_dir) and not force:
        log.info("%s: outputs complete under %s, skipped", name, stage_dir)
        return stage_dir
    if not checked:
        preflight(cfg, (name,))
    storage.write_text(out(cfg, "config.yaml"), dump_config(cfg))
    if name != "report":
        init_ray(cfg.run.ray_address)
    log.info("%s: starting", name)
    t0 = time.perf_counter()
    try:
        result = STAGE_FUNCS[name](cfg)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("mak_ray"):
            raise StageNotBuilt(f"stage '{name}' is not built yet (missing module {e.name})") from e
        raise
    seconds = time.perf_counter() - t0
    _record_time(cfg, name, seconds)
    log.info("%s: done in %.1f s -> %s", name, seconds, result)
    return result


def run_pipeline(cfg: MakConfig) -> str:
    """All stages in order; completed ones are skipped, so a rerun resumes."""
    preflight(cfg, STAGES)
    result = None
    for name in STAGES:
        result = run_stage(name, cfg, checked=True)
    log.info("pipeline complete: report at %s", result)
    return str(result)


def repo_config(name: str) -> Path | None:
    """A preset config shipped in the repository's configs/ folder, if present."""
    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    return path if path.exists() else None


def run_demo(
    *,
    preset: str = "small",
    data_dir: str | None = None,
    data_out: str | None = None,
    output: str | None = None,
    synthetic: bool = False,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> str:
    """Build the Fashion-MNIST (or generated) demo data, then run the whole pipeline on it."""
    import yaml

    from mak_ray.config import config_from_dict
    from mak_ray.demo.make import make_demo_data

    data_out = data_out or f"demo-data/{preset}"
    output = output or f"runs/demo-{preset}"
    path = config_path or repo_config(f"demo-{preset}") or repo_config(preset)
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    info = make_demo_data(data_out, preset, data_dir=data_dir, synthetic=synthetic)
    paths = info["paths"]
    merge_overrides(
        data,
        [
            f"data.target={paths['target']}",
            f"data.pool={paths['pool']}",
            f"data.eval_train={paths['eval_train']}",
            f"data.eval_test={paths['eval_test']}",
            f"run.output_uri={output}",
            f"select.budget={info['suggested_budget']}",
        ]
        + list(overrides or []),
    )
    cfg = config_from_dict(data)
    return run_pipeline(cfg)


__all__ = ["STAGES", "StageNotBuilt", "load_config", "run_demo", "run_pipeline", "run_stage"]
