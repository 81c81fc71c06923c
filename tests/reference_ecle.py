"""The CPU bank ECLE that ``mak_ray.mak.ecle.BankECLE`` replaced, kept verbatim as the oracle for tests and
benchmarks (the device path must equal it to 1e-5 in float32 on the CPU)."""

from __future__ import annotations

import numpy as np
import torch

from mak_ray.mak.ecle import bank_permutation, sample_offsets

_CHUNK_ELEMS = 4_000_000


def window_mask(ranks_t: np.ndarray, offsets: np.ndarray, count: int) -> np.ndarray:
    """0/1 float32 mask [n, M, repeats]: bank sample j is in sample i's window of repeat r.

    ``ranks_t[j, r]`` is j's position in repeat r's permutation, ``offsets[i, r]``
    the sample's start; the window is ``count`` cyclically consecutive
    positions, i.e. ``(rank - offset) mod M < count``.  Computed without a
    modulo in the narrowest unsigned type: ``v = rank + M - offset`` lies in
    (0, 2M), and ``min(v, v - M)`` (the subtraction wraps for v < M) is
    ``v mod M``.
    """
    m = ranks_t.shape[0]
    dt = np.uint16 if 2 * m < 2**16 else np.uint32
    v = (ranks_t + m).astype(dt)[None, :, :] - offsets.astype(dt)[:, None, :]
    np.minimum(v, v - dt(m), out=v)
    return (v < count).astype(np.float32)


def ecle_bank(
    z: torch.Tensor, bank: torch.Tensor, keys_u64: np.ndarray, t: float, n_neg: int, repeats: int, seed: int
) -> np.ndarray:
    r_views, n, d = z.shape
    m = bank.shape[1]
    # the logit shift -1/t rides in the GEMM as an extra column ([z/t, -1/t] . [b, 1]),
    # so exp() <= 1 for any temperature at no extra pass over the similarity block
    bank_aug = torch.cat([bank.reshape(r_views * m, d), bank.new_ones(r_views * m, 1)], dim=1)
    bank_aug_t = bank_aug.T.contiguous()  # [D+1, R*M]; column v*M + j = bank sample j, view v
    # rank of each bank sample in every repeat's permutation: [M, repeats]
    ranks_t = np.empty((m, repeats), dtype=np.int64)
    for r in range(repeats):
        ranks_t[bank_permutation(m, seed=seed, repeat=r), r] = np.arange(m)
    offsets = np.stack(
        [sample_offsets(keys_u64, m, seed=seed, repeat=r) for r in range(repeats)], axis=1
    )  # [N, repeats]
    chunk = max(1, min(n, _CHUNK_ELEMS // (r_views * r_views * m)))
    sim_buf = torch.empty(chunk * r_views, r_views * m, dtype=z.dtype)
    off_diag = ~torch.eye(r_views, dtype=torch.bool)
    n_pairs = r_views * (r_views - 1)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        c = stop - start
        zc = z[:, start:stop].permute(1, 0, 2).reshape(c * r_views, d)  # row i*R + p
        za = torch.cat([zc * (1.0 / t), zc.new_full((c * r_views, 1), -1.0 / t)], dim=1)
        x = sim_buf[: c * r_views]
        torch.mm(za, bank_aug_t, out=x)  # (sim - 1) / t for every sample view x bank view
        x.exp_()
        w = torch.from_numpy(window_mask(ranks_t, offsets[start:stop], n_neg)).to(z.dtype)
        # e[i, p, v, r]: sum of exp over sample i's repeat-r window of bank view v, anchor view p
        e = torch.bmm(x.view(c, r_views * r_views, m), w).view(c, r_views, r_views, repeats).double()
        zc3 = zc.view(c, r_views, d)
        pos = (torch.bmm(zc3, zc3.transpose(1, 2)).double() - 1.0) / t  # [c, p, q]
        e_pp = e.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # [c, p, r]: sum over bank view p
        # denominator for anchor p, pair (p, q), repeat r: exp(pos) + E[p, view p] + E[p, view q]
        denom = torch.exp(pos)[..., None] + e_pp[:, :, None, :] + e
        loss = torch.log(denom) - pos[..., None]  # [c, p, q, r]
        out[start:stop] = (loss[:, off_diag].sum(dim=(1, 2)) / (n_pairs * repeats)).numpy()
    return out
