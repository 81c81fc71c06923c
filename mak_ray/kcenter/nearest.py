"""Exact nearest center for many points: blocked GEMMs and one argmin pass per block.

``|x - c|^2 = |x|^2 + |c|^2 - 2 x.c``: the products come from one matrix
multiplication per block of points, so nothing N x m is ever held.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import Ops

BLOCK_ELEMS = 16_000_000  # largest temporary distance block, in elements


def nearest_numpy(
    x: np.ndarray, sqx: np.ndarray, c: np.ndarray, sqc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(squared distance to, index of) each point's nearest row of ``c``; lowest index on ties.

    Plain numpy (its BLAS), so the numpy K-center never imports torch.
    """
    n, m = len(x), len(c)
    ct = np.ascontiguousarray((c * -2.0).T)  # scaling by -2 is exact
    step = max(1, min(n, BLOCK_ELEMS // max(m, 1)))
    buf = np.empty((step, m), dtype=x.dtype)
    vals = np.empty(n, dtype=x.dtype)
    idx = np.empty(n, dtype=np.int64)
    for a in range(0, n, step):
        b = min(n, a + step)
        blk = buf[: b - a]
        np.matmul(x[a:b], ct, out=blk)
        blk += sqc[None, :]
        j = blk.argmin(axis=1)
        idx[a:b] = j
        vals[a:b] = blk[np.arange(b - a), j]
    vals += sqx
    return np.maximum(vals, 0, out=vals), idx


def sqdist(x: np.ndarray, sqx: np.ndarray, c: np.ndarray, sqc: np.ndarray) -> np.ndarray:
    """All squared distances [len(x), len(c)] (clamped at 0); for small blocks."""
    d = x @ c.T
    d *= -2.0
    d += sqx[:, None]
    d += sqc[None, :]
    return np.maximum(d, 0.0, out=d)


def nearest_init(ops: Ops, x: Any, sqx: Any, init: Any) -> tuple[Any, Any, int]:
    """Exact squared distance and index of each candidate's nearest init point.

    Torch GEMMs (MKL/oneDNN: bitwise the same for any thread count and block
    split, checked), so that the two-stage K-center's shards and replays,
    which compare distances computed in different processes and blocks, agree.
    ``[x, 1] . [-2 c, |c|^2]`` gives ``|c|^2 - 2 x.c`` straight out of the GEMM;
    on CPU the row argmin runs in numpy (~6x faster than torch's ``min(dim)``).
    Returns (mind2, nearest, number of candidate-init distances computed).
    """
    import torch

    n, m = x.shape[0], init.shape[0]
    on_cpu = not isinstance(x, torch.Tensor) or x.device.type == "cpu"
    xt = torch.as_tensor(x)
    it = torch.as_tensor(init)
    sqi = (it * it).sum(1)
    aug = torch.cat([it * -2.0, sqi[:, None]], dim=1).T.contiguous()  # [D+1, m]
    step = max(1, min(n, BLOCK_ELEMS // max(m, 1)))
    buf = torch.empty(step, m, dtype=xt.dtype, device=xt.device)
    xa = torch.ones(step, xt.shape[1] + 1, dtype=xt.dtype, device=xt.device)
    vals_all = torch.empty(n, dtype=xt.dtype, device=xt.device)
    idx_all = torch.empty(n, dtype=torch.int64, device=xt.device)
    for a in range(0, n, step):
        b = min(n, a + step)
        blk, xb = buf[: b - a], xa[: b - a]
        xb[:, :-1] = xt[a:b]
        torch.mm(xb, aug, out=blk)
        if on_cpu:
            blk_np = blk.numpy()
            idx = blk_np.argmin(axis=1)
            idx_all[a:b] = torch.from_numpy(idx)
            vals_all[a:b] = torch.from_numpy(blk_np[np.arange(b - a), idx])
        else:
            vals_all[a:b], idx_all[a:b] = blk.min(dim=1)
    if isinstance(x, np.ndarray):
        vals, nearest = vals_all.numpy(), idx_all.numpy()
    else:
        vals, nearest = vals_all, idx_all
    return ops.clamp0(vals + sqx), nearest, n * m
