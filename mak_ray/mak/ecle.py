"""ECLE: expected contrastive loss of each sample (Jiang et al., NeurIPS 2021).

A sample's ECLE is its NT-Xent loss averaged over view pairs and over random
draws of its negatives.  The per-pair loss follows the paper's code: both views
act as anchor, the positive is the other view of the same sample, the
denominator sums over every view in the batch except the anchor itself (so it
includes the positive and both views of every negative), cosine similarities
are divided by the temperature, and the sample's loss is the mean of its two
anchor losses.

Two regimes:

* ``negatives=None`` (reference): negatives are the other samples of ``views``
  in random batches (``np.array_split`` of a permutation into
  ``ceil(N / batch_size)`` near-equal batches), averaged over ``repeats``
  batchings.  With ``N <= batch_size`` there is one batch and the result is
  deterministic.
* a negative bank ``[R, M, D]``: for each repeat a sample gets ``batch_size - 1``
  distinct bank samples, a uniformly random subset drawn from ``(seed, repeat,
  key)`` only (see ``draw_negatives``), so the value never depends on which
  samples are scored together, on sharding or on order.

Implementation note (bank): for a chunk of samples we compute every sample
view against every bank view once with one GEMM whose extra column carries the
shift ``-1/t`` (so ``exp`` never exceeds 1 for any temperature), exponentiate
once in place, and sum each (sample, repeat) window with a batched matmul
against a 0/1 window mask (``window_mask``).  The window of a (sample, repeat)
is shared by all R*(R-1)/2 view pairs, which is what makes the per-pair cost
negligible.  Cost: O(N * R^2 * M * D), dominated by the GEMM; keep M in the low
thousands.  Prefix sums over each repeat's permuted bank order (a gather and a
cumsum per repeat) are far slower than the masked matmul, which reads the
similarity block once for all repeats.
:class:`BankECLE` holds the prepared bank on a device (CPU chunks stay
cache-resident, GPU chunks hold a whole scoring batch); only the [N] result
comes back to the host.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mak_ray.hashing import mix64
from mak_ray.validate import as_float_array, check_nonzero_rows

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_ELEMS = 4_000_000  # float elements of the per-chunk similarity buffer on a CPU (stays cache-resident)
_CHUNK_ELEMS_GPU = 128_000_000  # on a GPU: a whole scoring batch in one chunk, few kernel launches


def ecle(
    views: Any,
    negatives: Any = None,
    *,
    temperature: float = 0.2,
    batch_size: int = 512,
    repeats: int = 10,
    seed: int = 0,
    keys: Sequence[Any] | np.ndarray | None = None,
) -> np.ndarray:
    """Per-sample expected contrastive loss, float64 array of shape [N].

    ``views``: [R, N, D] projections of R >= 2 augmented views.  ``negatives``:
    optional bank [R, M, D] (same R and D) with M >= batch_size - 1.  ``keys``:
    per-sample RNG keys for the bank draws (ints or strings; default the sample
    index); ignored without a bank.
    """
    import torch

    z = _normalised_views("views", views)
    r_views, n, _ = z.shape
    if temperature <= 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if int(batch_size) < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    zt = torch.from_numpy(np.ascontiguousarray(z))
    if negatives is None:
        if n < 2:
            raise ValueError("in-batch ECLE needs at least 2 samples; pass a negative bank instead")
        return _ecle_in_batch(zt, float(temperature), int(batch_size), int(repeats), int(seed))
    bank = _normalised_views("negatives", negatives)
    if bank.shape[0] != r_views:
        raise ValueError(f"negatives has {bank.shape[0]} views but views has {r_views}")
    if bank.shape[2] != z.shape[2]:
        raise ValueError(
            f"dimension mismatch: views has dimension {z.shape[2]} but negatives has {bank.shape[2]}"
        )
    n_neg = int(batch_size) - 1
    if bank.shape[1] < n_neg:
        raise ValueError(
            f"the negative bank has {bank.shape[1]} samples but batch_size - 1 = {n_neg} distinct "
            "negatives are drawn per sample"
        )
    key_u64 = keys_to_u64(keys, n)
    bt = torch.from_numpy(np.ascontiguousarray(bank)).to(zt.dtype)
    return _ecle_bank(zt, bt, key_u64, float(temperature), n_neg, int(repeats), int(seed))


def _normalised_views(name: str, x: Any) -> np.ndarray:
    arr = as_float_array(name, x, 3)
    if arr.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 views along axis 0, got shape {arr.shape}")
    norms = check_nonzero_rows(name, arr)
    return arr / norms[..., None].astype(arr.dtype)


# --------------------------------------------------------------------------- in-batch (reference)


def _ecle_in_batch(z: torch.Tensor, t: float, batch_size: int, repeats: int, seed: int) -> np.ndarray:
    import torch

    n = z.shape[1]
    if n <= batch_size:  # one batch: every batching is the same, so one pass is exact
        return _batch_losses(z, t).numpy().astype(np.float64)
    out = np.zeros(n, dtype=np.float64)
    n_batches = -(-n // batch_size)
    for r in range(repeats):
        perm = np.random.default_rng(np.random.SeedSequence([seed, r])).permutation(n)
        for idx in np.array_split(perm, n_batches):
            it = torch.from_numpy(idx)
            out[idx] += _batch_losses(z[:, it], t).numpy()
    return out / repeats


def _batch_losses(zb: torch.Tensor, t: float) -> torch.Tensor:
    import torch

    """Mean NT-Xent loss over all view pairs for one batch [R, B, D] of unit vectors."""
    r_views, b, d = zb.shape
    flat = zb.reshape(r_views * b, d)
    eye = torch.eye(b, dtype=torch.bool)
    total = torch.zeros(b, dtype=torch.float64)
    off_diag = ~torch.eye(r_views, dtype=torch.bool)
    for p in range(r_views):
        sim = (zb[p] @ flat.T).reshape(b, r_views, b)  # [anchor i, view v, sample j]
        pos = sim[:, :, :].diagonal(dim1=0, dim2=2).T  # [i, v]: anchor i view p vs sample i view v
        x = torch.exp((sim - 1.0) / t)
        x[:, p, :].masked_fill_(eye, 0.0)  # drop the anchor itself
        e = x.sum(dim=2)  # [i, v]
        # anchor (i, p) in pair (p, q): denominator = E[i, p] (no self) + E[i, q] (has the positive)
        loss = torch.log(e[:, p : p + 1] + e).double() - (pos.double() - 1.0) / t  # [i, q]
        total += loss[:, off_diag[p]].sum(dim=1)
    return total / (r_views * (r_views - 1))


# --------------------------------------------------------------------------- negative bank


def keys_to_u64(keys: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """Map per-sample keys to uint64 RNG keys: ints as two's complement, str/bytes via blake2b-64."""
    if keys is None:
        return np.arange(n, dtype=np.uint64)
    if len(keys) != n:
        raise ValueError(f"keys has {len(keys)} entries but views has {n} samples")
    arr = np.asarray(keys)
    if arr.dtype.kind in "iu":
        return (
            arr.astype(np.int64, copy=False).view(np.uint64)
            if arr.dtype.kind == "i"
            else arr.astype(np.uint64)
        )
    out = np.empty(n, dtype=np.uint64)
    for i, key in enumerate(keys):
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            out[i] = np.uint64(int(key) & 0xFFFFFFFFFFFFFFFF)
            continue
        data = key if isinstance(key, bytes) else str(key).encode("utf-8")
        out[i] = np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), dtype="<u8")[0]
    return out


def _mix64(x: np.ndarray) -> np.ndarray:
    return mix64(np.asarray(x, dtype=np.uint64))


def _below(u: np.ndarray, bound: int) -> np.ndarray:
    """Map uniform uint64 to [0, bound) with Lemire's multiply-shift (bias <= bound / 2**32)."""
    return (((u >> np.uint64(32)) * np.uint64(bound)) >> np.uint64(32)).astype(np.int64)


def _repeat_state(seed: int, repeat: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        s = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        return _mix64((s ^ np.uint64(repeat & 0xFFFFFFFFFFFFFFFF)) + _GOLDEN)


def bank_permutation(bank_size: int, *, seed: int, repeat: int) -> np.ndarray:
    """The repeat's uniformly random order of the bank (depends on seed and repeat only)."""
    state = int(_repeat_state(seed, repeat)[0])
    return np.random.Generator(np.random.Philox(key=state)).permutation(bank_size)


def sample_offsets(keys_u64: np.ndarray, bank_size: int, *, seed: int, repeat: int) -> np.ndarray:
    """Per-sample start offsets in [0, bank_size), from (seed, repeat, key) only."""
    with np.errstate(over="ignore"):
        u = _mix64(_mix64(_repeat_state(seed, repeat) ^ np.asarray(keys_u64, dtype=np.uint64)) + _GOLDEN)
    return _below(u, bank_size)


def draw_negatives(keys_u64: np.ndarray, bank_size: int, count: int, *, seed: int, repeat: int) -> np.ndarray:
    """Bank indices [len(keys), count] of each sample's negatives for one repeat.

    The negatives are ``count`` cyclically consecutive entries of the repeat's
    random bank permutation, starting at the sample's own offset.  Because the
    permutation is uniform, each sample's set is a uniformly random subset of
    the bank of that size (distinct members); it depends only on (seed, repeat,
    key).  Sharing one permutation per repeat mirrors the paper, where the
    samples of one batch share their negatives, and lets the sum over a set be
    a cheap masked reduction.
    """
    if count > bank_size:
        raise ValueError(f"cannot draw {count} distinct negatives from a bank of {bank_size}")
    perm = bank_permutation(bank_size, seed=seed, repeat=repeat)
    start = sample_offsets(keys_u64, bank_size, seed=seed, repeat=repeat)
    return perm[(start[:, None] + np.arange(count)[None, :]) % bank_size]


def window_index_dtype(bank_size: int) -> Any:
    """The narrowest signed integer type that holds ``rank - offset`` in (-M, M): int16 up to M = 32767."""
    import torch

    return torch.int16 if bank_size <= 32767 else torch.int32


def window_mask(ranks_t: Any, offsets: Any, count: int) -> Any:
    """0/1 float32 mask [n, M, repeats]: bank sample j is in sample i's window of repeat r.

    ``ranks_t[j, r]`` is j's position in repeat r's permutation, ``offsets[i, r]``
    the sample's start; the window is ``count`` cyclically consecutive
    positions, i.e. ``(rank - offset) mod M < count``.  Computed without a
    modulo in the narrowest signed type (:func:`window_index_dtype`; tensors must
    come in it): ``v = rank - offset`` lies in (-M, M), adding ``M`` where the
    sign bit is set gives ``v mod M``, and on integers ``clamp(count - v, 0, 1)``
    is the 0/1 of ``v < count``.  Tensors in, a tensor out on their device;
    numpy in, numpy out.
    """
    import torch

    if isinstance(ranks_t, np.ndarray):
        dt = window_index_dtype(ranks_t.shape[0])
        r, o = torch.from_numpy(ranks_t).to(dt), torch.from_numpy(np.asarray(offsets)).to(dt)
        return window_mask(r, o, count).numpy()
    m = ranks_t.shape[0]
    v = ranks_t[None, :, :] - offsets[:, None, :]
    v += (v >> (torch.iinfo(v.dtype).bits - 1)) & m
    return v.neg_().add_(count).clamp_(0, 1).to(torch.float32)


class BankECLE:
    """ECLE against one negative bank, prepared once on a device (CPU or GPU).

    The bank (transposed, with the shift column) and every repeat's bank ranks live on the device; a call takes
    unit projections on the device and returns the samples' ECLE there (float64 ``[N]``), so a caller can queue
    more device work before reading it back.  Host work per call: the samples' window offsets (a hash per key
    and repeat), one small copy.
    """

    def __init__(
        self,
        bank: Any,
        *,
        temperature: float,
        n_neg: int,
        repeats: int,
        seed: int,
        device: Any = "cpu",
        chunk_elements: int | None = None,
    ) -> None:
        import torch

        self.device = torch.device(device)
        b = torch.as_tensor(bank).to(self.device)
        self.r_views, self.m, self.d = b.shape
        if not 1 <= n_neg <= self.m:
            raise ValueError(f"cannot draw {n_neg} distinct negatives from a bank of {self.m}")
        self.t, self.n_neg, self.repeats, self.seed = float(temperature), int(n_neg), int(repeats), int(seed)
        # the logit shift -1/t rides in the GEMM as an extra column ([z/t, -1/t] . [b, 1]),
        # so exp() <= 1 for any temperature at no extra pass over the similarity block
        flat = b.reshape(self.r_views * self.m, self.d)
        self.bank_aug_t = torch.cat([flat, flat.new_ones(self.r_views * self.m, 1)], dim=1).T.contiguous()
        # rank of each bank sample in every repeat's permutation: [M, repeats]
        ranks_t = np.empty((self.m, self.repeats), dtype=np.int64)
        for r in range(self.repeats):
            ranks_t[bank_permutation(self.m, seed=self.seed, repeat=r), r] = np.arange(self.m)
        self.index_dtype = window_index_dtype(self.m)
        self.ranks_t = torch.from_numpy(ranks_t).to(self.device, self.index_dtype)
        if chunk_elements is None:
            chunk_elements = _CHUNK_ELEMS if self.device.type == "cpu" else _CHUNK_ELEMS_GPU
        self.chunk_elements = int(chunk_elements)
        # the view pairs (p, q), p != q, as integer indices: a boolean-mask index would read the GPU back
        pairs = (~torch.eye(self.r_views, dtype=torch.bool)).nonzero(as_tuple=True)
        self.pair_p, self.pair_q = (i.to(self.device) for i in pairs)

    @property
    def dtype(self) -> Any:
        return self.bank_aug_t.dtype

    def offsets(self, keys_u64: np.ndarray) -> np.ndarray:
        """Each sample's window start in every repeat, ``[N, repeats]`` int64 (host)."""
        return np.stack(
            [sample_offsets(keys_u64, self.m, seed=self.seed, repeat=r) for r in range(self.repeats)], axis=1
        )

    def __call__(self, z: Any, keys_u64: np.ndarray) -> Any:
        """ECLE ``[N]`` float64 on the device of unit projections ``z`` ``[R, N, D]`` (on the bank's device)."""
        import torch

        r_views, n, d = z.shape
        if (r_views, d) != (self.r_views, self.d):
            raise ValueError(
                f"views [R, N, D] = {tuple(z.shape)} do not match the bank {self.r_views, self.m, self.d}"
            )
        out = torch.empty(n, dtype=torch.float64, device=z.device)
        if n == 0:
            return out
        offsets = torch.from_numpy(self.offsets(keys_u64)).to(self.index_dtype)
        if z.device.type == "cuda":
            offsets = offsets.pin_memory().to(z.device, non_blocking=True)
        t, m = self.t, self.m
        chunk = max(1, min(n, self.chunk_elements // (r_views * r_views * m)))
        n_pairs = r_views * (r_views - 1)
        sim_buf = torch.empty(chunk * r_views, r_views * m, dtype=z.dtype, device=z.device)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            c = stop - start
            zc = z[:, start:stop].permute(1, 0, 2).reshape(c * r_views, d)  # row i*R + p
            za = torch.cat([zc * (1.0 / t), zc.new_full((c * r_views, 1), -1.0 / t)], dim=1)
            x = sim_buf[: c * r_views]
            torch.mm(za, self.bank_aug_t, out=x)  # (sim - 1) / t for every sample view x bank view
            x.exp_()
            w = window_mask(self.ranks_t, offsets[start:stop], self.n_neg).to(z.dtype)
            # e[i, p, v, r]: sum of exp over sample i's repeat-r window of bank view v, anchor view p
            e = torch.bmm(x.view(c, r_views * r_views, m), w).view(c, r_views, r_views, self.repeats).double()
            zc3 = zc.view(c, r_views, d)
            pos = (torch.bmm(zc3, zc3.transpose(1, 2)).double() - 1.0) / t  # [c, p, q]
            e_pp = e.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # [c, p, r]: sum over bank view p
            # denominator for anchor p, pair (p, q), repeat r: exp(pos) + E[p, view p] + E[p, view q]
            denom = torch.exp(pos)[..., None] + e_pp[:, :, None, :] + e
            loss = torch.log(denom) - pos[..., None]  # [c, p, q, r]
            out[start:stop] = loss[:, self.pair_p, self.pair_q].sum(dim=(1, 2)) / (n_pairs * self.repeats)
        return out


def _ecle_bank(
    z: torch.Tensor, bank: torch.Tensor, keys_u64: np.ndarray, t: float, n_neg: int, repeats: int, seed: int
) -> np.ndarray:
    engine = BankECLE(bank, temperature=t, n_neg=n_neg, repeats=repeats, seed=seed, device=z.device)
    out = engine(z, keys_u64)
    log.debug("ecle: %d samples against a bank of %d", z.shape[1], engine.m)
    return out.cpu().numpy()
