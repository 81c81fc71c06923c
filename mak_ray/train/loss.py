"""NT-Xent (SimCLR's normalised temperature-scaled cross entropy), single-process and with gathered negatives.

With several workers each one holds a slice of the global batch. :func:`distributed_nt_xent` gathers every
worker's projections (keeping gradients), scores the local anchors against all ``2N`` candidates, and averages
over the local anchors. DDP then averages the gradients over workers, so both the loss (averaged over workers)
and the gradients equal the single-process loss on the whole global batch. This needs equal per-worker batch
sizes, which the trainer guarantees (equal shards, ``drop_last``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every worker's gradient for my slice back to me (summed).

    Written out rather than ``torch.distributed.nn.all_gather`` because its backward needs reduce_scatter,
    which gloo (CPU workers) lacks; an all_reduce of the [N, D] gradient costs nothing at projection size.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all workers in rank order, differentiably; identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def _nt_xent_core(
    z1: torch.Tensor,
    z2: torch.Tensor,
    all1: torch.Tensor,
    all2: torch.Tensor,
    offset: int,
    temperature: float,
) -> torch.Tensor:
    """Mean NT-Xent over the local anchors ``cat(z1, z2)`` against all candidates ``cat(all1, all2)``.

    ``offset`` is the index of ``z1[0]`` inside ``all1`` (rank * local batch).
    """
    b, n = z1.shape[0], all1.shape[0]
    anchors = torch.cat([z1, z2], dim=0)  # [2b, D]
    candidates = torch.cat([all1, all2], dim=0)  # [2n, D]
    logits = anchors @ candidates.T / temperature  # [2b, 2n]
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + n])  # where each anchor sits among the candidates
    pos_idx = torch.cat([local + n, local])  # its other view
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Single-process NT-Xent for two views ``[B, D]`` (un-normalised projections); computed in float32."""
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    return _nt_xent_core(z1, z2, z1, z2, 0, temperature)


def distributed_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent with negatives gathered from every worker; equals :func:`nt_xent` without a process group."""
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _nt_xent_core(z1, z2, z1, z2, 0, temperature)
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    return _nt_xent_core(z1, z2, all1, all2, dist.get_rank() * z1.shape[0], temperature)
