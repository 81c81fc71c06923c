"""The SimCLR step with views rendered on the training device: unchanged on square inputs, and it takes frames of
mixed sizes as Ray Data hands them over."""

from __future__ import annotations

import copy

import numpy as np
import torch

from mak_ray.config import ModelSection, TrainSection
from mak_ray.models import build_model
from mak_ray.train.loop import as_image_array, make_optimizer, train_step
from mak_ray.train.loss import distributed_nt_xent
from tests import reference_augment as ref

SIZE = 16


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSection(width=8, proj_dim=16))


def test_step_on_square_inputs_equals_the_replaced_cpu_views() -> None:
    images = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    section = TrainSection(lr=0.1, warmup_epochs=0, epochs=1)
    model = _model()
    twin = copy.deepcopy(model)
    opt, sched = make_optimizer(model, section, 8, 1)
    torch.manual_seed(3)
    loss = train_step(model, opt, sched, images, SIZE, 0.2, torch.device("cpu"))
    # the replaced step: views from the CPU implementation, the same forward, loss and update
    opt2, sched2 = make_optimizer(twin, section, 8, 1)
    torch.manual_seed(3)
    v1, v2 = ref.augment_batch(images, SIZE), ref.augment_batch(images, SIZE)
    z = twin(torch.cat([v1, v2]))
    want = distributed_nt_xent(z[:8], z[8:], 0.2)
    opt2.zero_grad()
    want.backward()
    opt2.step()
    assert torch.equal(loss, want.detach())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_step_takes_frames_of_mixed_sizes() -> None:
    rng = np.random.default_rng(1)
    column = np.empty(6, dtype=object)
    column[:] = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(18, 24), (24, 18), (18, 18)] * 2
    ]
    images = as_image_array(column)
    assert images.dtype == object  # ragged: handed over as frames
    model = _model()
    opt, sched = make_optimizer(model, TrainSection(warmup_epochs=0, epochs=1), 6, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, opt, sched, images, SIZE, 0.2, torch.device("cpu"))
    assert torch.isfinite(loss) and loss.ndim == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    same = np.empty(2, dtype=object)
    same[:] = [np.zeros((SIZE, SIZE, 3), np.uint8)] * 2
    assert as_image_array(same).shape == (2, SIZE, SIZE, 3)  # one size: stacked, as before
