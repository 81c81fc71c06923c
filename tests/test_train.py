"""SimCLR on Ray Train: 2 CPU workers on S3 storage with a falling loss, and resuming after a kill."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import ray.train
import torch

from mak_ray import storage
from mak_ray.config import MakConfig, config_from_dict
from mak_ray.layout import TrainOutput
from mak_ray.models import load_model, read_model_file
from mak_ray.train.trainer import train_simclr
from tests.faults import CrashOnce, register

SIZE = 16


def _cfg(**train) -> MakConfig:
    base = {"batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5, "warmup_epochs": 0, "epochs": 2}
    base.update(train)
    return config_from_dict(
        {"data": {"image_size": SIZE}, "model": {"width": 8, "proj_dim": 16}, "pretrain": base}
    )


def _dataset(images: np.ndarray):
    import ray

    # an extra column, as real rows carry ids: training must ignore it
    return ray.data.from_items([{"image": im, "id": f"img-{i}"} for i, im in enumerate(images)])


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)


def _easy(n: int = 64, seed: int = 0) -> np.ndarray:
    """Grey 2x2 block layouts (3 levels per block): distinct shapes that survive crops and colour jitter."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 3, size=(n, 2, 2, 1)) * 127
    return np.broadcast_to(cells.repeat(SIZE // 2, 1).repeat(SIZE // 2, 2), (n, SIZE, SIZE, 3)).astype(
        np.uint8
    )


def _history(out: TrainOutput) -> list[dict]:
    return storage.read_json(out.metrics)["history"]


def test_two_workers_on_s3_loss_is_finite_and_falls(ray_session, s3_bucket: str) -> None:
    """2 CPU workers (gathered negatives), checkpoints on S3, and the loss falling on an easy set.

    One run checks both, because each Ray Train run costs tens of seconds of fixed start-up here.
    """
    cfg = _cfg(num_workers=2, batch_size=16, lr=2.0, epochs=8, checkpoint_every=4)
    store = f"{s3_bucket}/pretrain"
    out = TrainOutput(store, "two-workers")
    uri = train_simclr(cfg, cfg.pretrain, _dataset(_easy(130)), out)
    assert uri == out.model == f"{store}/model.pt"
    hist = _history(out)
    assert [h["epoch"] for h in hist] == list(range(1, 9))
    # 130 rows over 2 workers -> 65 each -> 8 steps of 8 (the remainder is dropped)
    assert all(h["steps"] == 8 and math.isfinite(h["loss"]) and h["images_per_s"] > 0 for h in hist)
    losses = [h["loss"] for h in hist]
    chance = math.log(2 * 16 - 1)  # NT-Xent of embeddings that carry no information (global batch 16)
    late = float(np.mean(losses[-2:]))
    # margins sized from observed runs (falls of 0.19-0.25, 0.12-0.13 under chance) so shuffling noise passes
    assert late < losses[0] - 0.1, losses
    assert late < chance - 0.05, losses

    payload = read_model_file(uri)
    assert payload["extra"]["epoch"] == 8
    assert storage.list_files(f"{store}/two-workers")  # Ray Train's checkpoints went to S3
    model = load_model(uri)
    with torch.no_grad():
        assert torch.isfinite(model.embed(torch.randn(2, 3, SIZE, SIZE))).all()


def test_killed_worker_and_rerun_resume_from_checkpoint(ray_session, tmp_path) -> None:
    register()
    out = TrainOutput(str(tmp_path / "store"), "resume")
    cfg = _cfg(epochs=2, max_failures=0)
    data = _dataset(_noise(24))
    # 1) the worker dies right after the epoch-1 checkpoint and no retries are allowed: the run fails
    with pytest.raises(ray.train.TrainingFailedError):
        train_simclr(cfg, cfg.pretrain, data, out, epoch_end=CrashOnce(1, str(tmp_path / "m1")))
    assert os.path.exists(tmp_path / "m1")
    assert not storage.exists(out.model)

    # 2) rerun with the same name and one more epoch; it resumes at epoch 1, then the worker is killed again
    #    after epoch 2 and FailureConfig(max_failures=1) restarts it from that checkpoint
    cfg = _cfg(epochs=3, max_failures=1)
    uri = train_simclr(cfg, cfg.pretrain, data, out, epoch_end=CrashOnce(2, str(tmp_path / "m2")))
    assert os.path.exists(tmp_path / "m2")
    hist = _history(out)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert [h["resumed_from_epoch"] for h in hist] == [0, 1, 2]
    assert read_model_file(uri)["extra"]["epoch"] == 3
    load_model(uri)
