"""Seeded draws without replacement from ``range(n)`` that hold no per-item state, for any ``n``.

``permuted(seed, n, start, count)`` is positions ``start .. start+count-1`` of one pseudo-random permutation
of ``range(n)`` (a 4-round Feistel network on the smallest even number of bits that covers ``n``, with cycle
walking), so a sampler that needs more draws asks for the next positions and never repeats one, whatever
``n`` is, without a list of what it drew.
"""

from __future__ import annotations

import numpy as np

from mak_ray.hashing import mix64

ROUNDS = 4


def _keys(seed: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x5A4D])).integers(
        0, 2**63, size=ROUNDS, dtype=np.uint64
    )


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & mask
    with np.errstate(over="ignore"):
        for k in keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
    return (left << np.uint64(half)) | right


def permuted(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """int64 positions ``start .. start+count-1`` (clipped to ``n``) of the seeded permutation of range(n)."""
    stop = min(n, start + count)
    if stop <= start:
        return np.zeros(0, dtype=np.int64)
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    keys = _keys(seed)
    x = _feistel(np.arange(start, stop, dtype=np.uint64), half, keys)
    out = x >= np.uint64(n)
    while out.any():  # cycle walking: the domain is at most 4n, so a few steps at most on average
        x[out] = _feistel(x[out], half, keys)
        out = x >= np.uint64(n)
    return x.astype(np.int64)
