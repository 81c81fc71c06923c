"""SimCLR (pre/re)training on Ray Train's TorchTrainer, checkpointed to local or S3 storage, resumable.

Layout under a :class:`~mak_ray.layout.TrainOutput`'s root: Ray Train's run folder ``{root}/{run_name}/
checkpoint_*`` (each holds ``model.pt`` in the :mod:`mak_ray.models` file format and ``train_state.pt`` with
optimiser, scheduler, epoch and metric history), plus the final model and metric history at the paths the
``TrainOutput`` names.

Resumption: a worker restarted under ``FailureConfig(max_failures)`` and a rerun with the same ``run_name``
both start from the latest checkpoint's epoch (Ray Train restores the run's checkpoint list from storage).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mak_ray import storage
from mak_ray.config import MakConfig, ModelSection, TrainSection
from mak_ray.layout import TrainOutput
from mak_ray.models import build_model, load_init_weights, model_state_bytes
from mak_ray.train.loop import as_image_array, make_optimizer, prepare_model, train_step

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # inside a Ray Train checkpoint directory
STATE_FILE = "train_state.pt"
PROGRESS_LOG_S = 30.0
SHUFFLE_BATCHES = 4  # per-worker shuffle buffer, in batches

EpochHook = Callable[[int, int], None]
"""Called on every worker after each epoch's report, with (world rank, epochs done)."""


@dataclass
class _LoopConfig:
    model: dict[str, Any]
    train: dict[str, Any]
    image_size: int
    steps_per_epoch: int
    seed: int
    init_model: str | None = None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _write_checkpoint(
    directory: str,
    model: torch.nn.Module,
    model_cfg: ModelSection,
    optimizer: Any,
    scheduler: Any,
    epoch: int,
    history: list,
) -> None:
    """model.pt (the models file format, directly loadable) + train_state.pt (what resuming needs)."""
    extra = {"epoch": epoch, "metrics": history[-1] if history else {}}
    with open(os.path.join(directory, MODEL_FILE), "wb") as f:
        f.write(model_state_bytes(model, model_cfg, extra))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": history,
        },
        os.path.join(directory, STATE_FILE),
    )


def _restore(checkpoint: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> tuple[int, list]:
    with checkpoint.as_directory() as d:
        model_payload = torch.load(os.path.join(d, MODEL_FILE), map_location="cpu", weights_only=True)
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    _unwrap(model).load_state_dict(model_payload["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    # Restore the step count but keep this run's schedule shape, so a rerun with more epochs continues along
    # the new cosine instead of the old one (LambdaLR.load_state_dict would overwrite the multipliers).
    fresh = [dict(fn.__dict__) for fn in scheduler.lr_lambdas]
    scheduler.load_state_dict(state["scheduler"])
    for fn, params in zip(scheduler.lr_lambdas, fresh):
        fn.__dict__.update(params)
    return int(state["epoch"]), list(state["history"])


def _train_loop(config: dict[str, Any]) -> None:
    """The per-worker training function run by TorchTrainer."""
    import ray.train
    import ray.train.torch

    epoch_end: EpochHook | None = config.pop("epoch_end", None)
    cfg = _LoopConfig(**config)
    section = TrainSection(**cfg.train)
    model_cfg = ModelSection(**cfg.model)
    torch.set_num_threads(
        max(1, math.ceil(section.cpus_per_worker))
    )  # 1.5 CPUs: 2 threads, 0.5 left for data
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    local_batch = section.batch_size // world

    torch.manual_seed(cfg.seed)  # identical initial weights everywhere (DDP also broadcasts rank 0's)
    model = build_model(model_cfg)
    if cfg.init_model and ray.train.get_checkpoint() is None:  # warm start; a resume uses its checkpoint
        what = load_init_weights(model, cfg.init_model)
        if rank == 0:
            log.info("initialised %s from %s", what, cfg.init_model)
    if section.use_gpu and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = ray.train.torch.prepare_model(prepare_model(model, device))  # channels_last on a GPU
    optimizer, scheduler = make_optimizer(model, section, local_batch * world, cfg.steps_per_epoch)

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start_epoch, history = _restore(checkpoint, model, optimizer, scheduler)
        if rank == 0:
            log.info("resuming from epoch %d (%s)", start_epoch, checkpoint.path)
    torch.manual_seed(cfg.seed * 100_003 + rank * 1009 + start_epoch)  # augmentation stream per worker

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, section.epochs):
        model.train()
        t0 = last_log = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        steps = 0
        for batch in shard.iter_batches(  # local shuffle: batch composition (hence negatives) varies by epoch
            batch_size=local_batch,
            batch_format="numpy",
            drop_last=True,
            prefetch_batches=2,
            local_shuffle_buffer_size=SHUFFLE_BATCHES * local_batch,
        ):
            images = as_image_array(batch["image"])
            loss_sum += train_step(
                model, optimizer, scheduler, images, cfg.image_size, section.temperature, device
            )
            steps += 1
            if rank == 0 and time.perf_counter() - last_log > PROGRESS_LOG_S:
                last_log = time.perf_counter()
                log.info("epoch %d step %d loss %.4f", epoch + 1, steps, float(loss_sum) / steps)
        totals = torch.stack(
            [loss_sum.to(torch.float64), torch.tensor(float(steps), device=device, dtype=torch.float64)]
        )
        if world > 1 and dist.is_initialized():
            dist.all_reduce(totals)  # on the worker's device: NCCL needs GPU tensors, gloo CPU ones
        totals = totals.cpu()
        elapsed = time.perf_counter() - t0
        total_steps = max(1.0, float(totals[1]))
        metrics = {
            "epoch": epoch + 1,
            "loss": float(totals[0]) / total_steps,
            "steps": int(totals[1]) // world,
            "images_per_s": float(totals[1]) * local_batch / elapsed,
            "epoch_time_s": elapsed,
            "lr": scheduler.get_last_lr()[0],
            "resumed_from_epoch": start_epoch,  # where this worker session started: shows a resume happened
        }
        history.append(metrics)
        if rank == 0:
            log.info(
                "epoch %d/%d loss %.4f  %.1f images/s  lr %.4g",
                epoch + 1,
                section.epochs,
                metrics["loss"],
                metrics["images_per_s"],
                metrics["lr"],
            )
        done = epoch + 1
        if done % section.checkpoint_every == 0 or done == section.epochs:
            if rank == 0:
                with tempfile.TemporaryDirectory(prefix="mak-ckpt-") as tmp:
                    _write_checkpoint(tmp, model, model_cfg, optimizer, scheduler, done, history)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        else:
            ray.train.report(metrics)
        if epoch_end is not None:
            epoch_end(rank, done)


def _run_config(section: TrainSection, storage_uri: str, run_name: str) -> Any:
    import ray.train

    kwargs: dict[str, Any] = {}
    if storage.is_s3(storage_uri):
        fs, path = storage.filesystem(storage_uri)
        kwargs.update(storage_path=path, storage_filesystem=fs)
    else:
        kwargs.update(storage_path=os.path.abspath(storage_uri))
    return ray.train.RunConfig(
        name=run_name,
        failure_config=ray.train.FailureConfig(max_failures=section.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        **kwargs,
    )


def train_simclr(
    cfg: MakConfig,
    section: TrainSection,
    dataset: Any,
    out: TrainOutput,
    *,
    num_rows: int | None = None,
    init_model: str | None = None,
    epoch_end: EpochHook | None = None,
) -> str:
    """Train SimCLR on ``dataset`` (a Ray Dataset with a uint8 ``image`` column) and return the final model URI.

    ``section`` is ``cfg.pretrain`` or ``cfg.retrain``; ``section.batch_size`` is the global batch, split evenly
    over ``section.num_workers``. ``num_rows`` (if known) saves a pass over the data to size the LR schedule.
    ``init_model``: weights to start from, a mak-ray model file or a torchvision ResNet state dict (a rerun of the same ``out.run_name`` resumes from its latest
    checkpoint instead). ``epoch_end``: see :data:`EpochHook` (it travels to the workers pickled).
    """
    storage_uri, run_name = out.root, out.run_name
    import ray.train
    from ray.train.torch import TorchTrainer

    workers = section.num_workers
    local_batch = section.batch_size // workers
    if local_batch < 2:
        raise ValueError(
            f"batch_size {section.batch_size} gives under 2 images per worker on {workers} workers"
        )
    dataset = dataset.randomize_block_order()  # no select_columns: it would add a 1-CPU task that can starve
    rows = int(num_rows) if num_rows is not None else dataset.count()
    steps_per_epoch = (rows // workers) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"{rows} images are fewer than one global batch ({local_batch} x {workers} workers); "
            "lower the batch size"
        )
    loop_cfg = _LoopConfig(
        model=dataclasses.asdict(cfg.model),
        train=dataclasses.asdict(section),
        image_size=cfg.data.image_size,
        steps_per_epoch=steps_per_epoch,
        seed=cfg.run.seed,
        init_model=init_model,
    )
    log.info(
        "training %s: %d images, %d workers x batch %d, %d steps/epoch, %d epochs -> %s/%s",
        cfg.model.arch,
        rows,
        workers,
        local_batch,
        steps_per_epoch,
        section.epochs,
        storage_uri,
        run_name,
    )
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={**dataclasses.asdict(loop_cfg), "epoch_end": epoch_end},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=section.use_gpu,
            resources_per_worker={"CPU": section.cpus_per_worker},
        ),
        run_config=_run_config(section, storage_uri, run_name),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, MODEL_FILE), "rb") as f:
            model_bytes = f.read()
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    storage.write_bytes(out.model, model_bytes)
    storage.write_json(out.metrics, {"run_name": run_name, "history": state["history"]})
    log.info("final model (epoch %d) -> %s", state["epoch"], out.model)
    return out.model
