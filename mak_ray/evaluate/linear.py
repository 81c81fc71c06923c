"""Linear probe: multinomial logistic regression in torch on frozen features.

Features are standardised with the train mean/std (stored in the model, so test features get the same
transform). Training is mini-batch SGD with momentum 0.9 and a cosine learning-rate decay to zero; weight
decay applies to the weights, not the bias. Weights start at zero (the problem is convex), and the only
randomness — the batch order — comes from a ``torch.Generator`` seeded by ``seed``, so a fit is
reproducible and leaves the global RNG alone. The thread count is whatever ``torch.set_num_threads`` says.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mak_ray.config import EvalSection

log = logging.getLogger(__name__)

MOMENTUM = 0.9
STD_EPS = 1e-6  # features constant over the train set are left unscaled instead of blowing up
LOG_EVERY_S = 30.0


class LinearProbe(nn.Module):
    """Standardise, then one linear layer; ``forward`` returns logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        # Zero init (not nn.Linear's random init, which would draw from the global RNG).
        self.weight = nn.Parameter(torch.zeros(n_classes, mean.numel()))
        self.bias = nn.Parameter(torch.zeros(n_classes))

    @property
    def n_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear((x - self.mean) / self.std, self.weight, self.bias)


def _as_features(x: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"features must be 2-D (n, dim), got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError("features contain NaN or inf")
    return t


def fit_linear(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    n_classes: int,
    cfg: EvalSection,
    seed: int,
    device: torch.device | str = "cpu",
) -> LinearProbe:
    """Train a :class:`LinearProbe` on features ``x`` (n, dim) and integer labels ``y`` in ``[0, n_classes)``."""
    xt = _as_features(x, device)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(
        device=device, dtype=torch.long
    )
    n = xt.shape[0]
    if yt.shape != (n,):
        raise ValueError(f"labels shape {tuple(yt.shape)} does not match {n} feature rows")
    if n == 0:
        raise ValueError("no training examples")
    if yt.min() < 0 or yt.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(yt.min())}, {int(yt.max())}]")

    mean = xt.mean(dim=0)
    std = xt.std(dim=0, unbiased=False)
    std = torch.where(std > STD_EPS, std, torch.ones_like(std))
    model = LinearProbe(mean, std, n_classes).to(device)
    opt = torch.optim.SGD(
        [
            {"params": [model.weight], "weight_decay": cfg.weight_decay},
            {"params": [model.bias], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        momentum=MOMENTUM,
    )
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total_steps = steps_per_epoch * cfg.epochs
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    step, last_log = 0, time.monotonic()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        epoch_loss = 0.0
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += float(loss.detach()) * len(idx)
            step += 1
        if time.monotonic() - last_log > LOG_EVERY_S or epoch == cfg.epochs - 1:
            log.info("linear probe epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, epoch_loss / n)
            last_log = time.monotonic()
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: LinearProbe, x: np.ndarray | torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Logits (n, n_classes) on the model's device, computed in chunks to bound memory."""
    device = model.mean.device
    xt = _as_features(x, device)
    model.eval()
    parts = [model(xt[i : i + batch_size]) for i in range(0, xt.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, model.n_classes, device=device)


def predict(model: LinearProbe, x: np.ndarray | torch.Tensor, batch_size: int = 8192) -> np.ndarray:
    """Predicted class indices (int64 numpy array)."""
    return predict_logits(model, x, batch_size).argmax(dim=1).cpu().numpy().astype(np.int64)
