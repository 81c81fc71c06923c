"""One SimCLR optimisation step and the optimiser it uses, shared by the Ray Train worker and the benchmark.

Keeping the step in one function means the benchmark's plain torch loop measures exactly the work a Ray Train
worker does (augment two views, forward, gathered NT-Xent, SGD step), so their ratio is Ray's overhead alone.

The augmentation runs on the training device (:mod:`mak_ray.augment`): the host only lays the batch's uint8
frames out (in pinned memory for a GPU) and draws the parameter table, so a GPU worker's data loading costs
little more than a copy per step, and the step never reads the GPU back (the loss stays on the device).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from mak_ray.augment import ImageBatch, augment_batch
from mak_ray.config import TrainSection
from mak_ray.train.loss import distributed_nt_xent
from mak_ray.train.schedule import WarmupCosine, scaled_lr


def make_optimizer(
    model: nn.Module, section: TrainSection, global_batch: int, steps_per_epoch: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (momentum, weight decay on weights only) at the batch-scaled LR, with per-step warmup + cosine.

    Biases and BatchNorm parameters get no weight decay, as in SimCLR: decaying BN scales only hurts.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    lr = scaled_lr(section.lr, global_batch)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": section.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=section.momentum,
    )
    schedule = WarmupCosine(section.epochs * steps_per_epoch, section.warmup_epochs * steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Channels_last weights on CUDA, matching :func:`train_step`'s inputs there (bf16 convolutions run fastest
    in that layout). Call before wrapping the model for DDP, which fixes the gradients' layout."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def as_image_array(column: np.ndarray) -> np.ndarray:
    """A batch's ``image`` column as :func:`train_step` takes it: a uint8 ``[B, H, W, 3]`` array when the frames
    share one size, else the object array of ``[h, w, 3]`` frames Ray gives for a variable-shaped column."""
    if column.dtype == object and len({f.shape for f in column}) == 1:
        column = np.stack(list(column))
    return column


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: np.ndarray,
    image_size: int,
    temperature: float,
    device: torch.device,
) -> torch.Tensor:
    """Two random views per image, one forward over both, gathered NT-Xent, one SGD step; returns the loss.

    ``images``: uint8 frames (see :func:`as_image_array`). The views are rendered on ``device``. The loss is
    returned detached and on ``device`` so callers can accumulate it without a host sync per step.
    """
    cuda = device.type == "cuda"
    batch = ImageBatch.from_frames(images, pin=cuda).to(device)
    view1 = augment_batch(batch, image_size)
    view2 = augment_batch(batch, image_size)
    x = torch.cat([view1, view2])
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    b = view1.shape[0]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    with amp:  # bf16 on GPU; the loss itself is computed in float32
        z = model(x)
    loss = distributed_nt_xent(z[:b], z[b:], temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()
