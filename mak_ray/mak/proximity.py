"""Proximity of pool samples to the target distribution.

The target set is summarised by k spherical K-means centroids; a sample's
proximity is its cosine distance to the nearest centroid (small = close to the
target, which MAK prefers).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mak_ray.validate import as_float_array, check_k, check_nonzero_rows, check_same_dim


def unit_rows(name: str, x: Any) -> np.ndarray:
    """Validated rows (finite, non-zero) scaled to unit length, float32."""
    arr = as_float_array(name, x, 2)
    norms = check_nonzero_rows(name, arr)
    return (arr / norms[:, None]).astype(np.float32)


def fit_centroids(
    target_emb: Any, k: int = 10, seed: int = 0, *, niter: int = 25, nredo: int = 5
) -> np.ndarray:
    """Spherical K-means (faiss) on L2-normalised target embeddings -> [k, D] unit centroids.

    ``nredo`` restarts keep the best objective: a single Lloyd run often merges
    two target modes, and the target set is small enough that this is cheap.
    """
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs each missing SIMD build at INFO
    import faiss  # imported lazily: heavy, and only this function needs it

    x = np.ascontiguousarray(unit_rows("target_emb", target_emb))
    k = check_k(k, len(x), what="target embeddings")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=int(seed), spherical=True, verbose=False)
    # faiss warns and subsamples below 39 points per centroid; that is fine for small targets
    km.cp.min_points_per_centroid = 1
    km.train(x)
    cent = np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])
    norms = np.linalg.norm(cent, axis=1, keepdims=True)
    return cent / np.where(norms > 0, norms, 1.0)


def proximity(emb: Any, centroids: Any) -> np.ndarray:
    """1 - max cosine similarity of each row of ``emb`` [N, D] to ``centroids`` [k, D]; float64 [N]."""
    x = unit_rows("emb", emb)
    c = unit_rows("centroids", centroids)
    check_same_dim("emb", x, "centroids", c)
    if len(c) == 0:
        raise ValueError("centroids is empty")
    out = np.empty(len(x), dtype=np.float64)
    step = max(1, 4_000_000 // max(1, len(c)))
    for s in range(0, len(x), step):
        out[s : s + step] = 1.0 - (x[s : s + step] @ c.T).max(axis=1)
    return out
