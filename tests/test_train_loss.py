"""NT-Xent: against a literal per-anchor formula, and gathered negatives on 2 gloo processes against 1 process."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mak_ray.train.loss import distributed_nt_xent, nt_xent


def _reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR's loss written anchor by anchor: -log(exp(s_pos/t) / sum_{k != i} exp(s_ik/t))."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        sims = [(z[i] @ z[k]).item() / t for k in range(2 * n) if k != i]
        total += -((z[i] @ z[j]).item() / t - math.log(sum(math.exp(s) for s in sims)))
    return total / (2 * n)


def test_nt_xent_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert abs(nt_xent(z1, z2, 0.2).item() - _reference(z1, z2, 0.2)) < 1e-4
    assert abs(nt_xent(z1, z2, 0.5).item() - _reference(z1, z2, 0.5)) < 1e-4
    # without a process group the distributed loss is the plain one
    assert torch.equal(distributed_nt_xent(z1, z2, 0.2), nt_xent(z1, z2, 0.2))


def test_nt_xent_prefers_aligned_views() -> None:
    z = torch.randn(16, 32)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z)).item() < nt_xent(z, torch.randn(16, 32)).item()


WORLD, LOCAL_B, D_IN, D_OUT = 2, 4, 6, 5


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(WORLD * LOCAL_B, D_IN, generator=g)
    x2 = x1 + 0.3 * torch.randn(WORLD * LOCAL_B, D_IN, generator=g)
    torch.manual_seed(2)
    return x1, x2, torch.nn.Linear(D_IN, D_OUT)


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x1, x2, layer = _data()
        sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        loss = distributed_nt_xent(layer(x1[sl]), layer(x2[sl]), 0.2)
        loss.backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        for gr in grads:  # what DDP does: average the gradients over workers
            dist.all_reduce(gr)
            gr /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out[rank] = (mean_loss.item() / WORLD, loss.item(), [gr.tolist() for gr in grads])
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_equal_single_process_loss_and_gradients() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(port, out), nprocs=WORLD, join=True)

    x1, x2, layer = _data()
    single = nt_xent(layer(x1), layer(x2), 0.2)
    single.backward()
    expect = [p.grad for p in layer.parameters()]

    for rank in range(WORLD):
        mean_loss, local_loss, grads = out[rank]
        assert abs(mean_loss - single.item()) < 1e-5
        for gr, ex in zip(grads, expect):
            assert torch.allclose(torch.tensor(gr), ex, atol=1e-5), (rank, gr, ex)
    # each worker's own loss differs from the global one (the test would notice a no-op gather)
    assert abs(out[0][1] - out[1][1]) > 1e-6
    manager.shutdown()
