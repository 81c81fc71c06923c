"""Augmentations: shapes, normalisation, per-image randomness, and seeded views independent of batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mak_ray.augment import (
    MEAN,
    STD,
    augment_batch,
    clean_batch,
    clean_transform,
    seeded_views,
    simclr_transform,
)


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_augment_batch_shape_and_randomness() -> None:
    imgs = _images(6)
    a = augment_batch(imgs, 16)
    b = augment_batch(imgs, 16)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # two calls, two views
    same = np.repeat(imgs[:1], 4, axis=0)  # identical inputs still get different per-image augmentations
    v = augment_batch(same, 16)
    assert not all(torch.equal(v[0], v[i]) for i in range(1, 4))


def test_clean_batch_is_normalised_identity() -> None:
    imgs = _images(3)
    x = clean_batch(imgs, 16)
    expect = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-6)
    t = clean_transform(16)(torch.from_numpy(imgs[0]).permute(2, 0, 1))
    assert torch.allclose(t, expect[0], atol=1e-6)
    assert clean_batch(_images(2, size=20), 16).shape == (2, 3, 16, 16)


def test_read_only_input_is_accepted() -> None:
    imgs = _images(2)
    imgs.flags.writeable = False
    assert augment_batch(imgs, 16).shape == (2, 3, 16, 16)


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        clean_batch(np.zeros((2, 16, 16, 3), dtype=np.float32), 16)
    with pytest.raises(ValueError, match=r"\[B, S, S, 3\]"):
        augment_batch(np.zeros((16, 16, 3), dtype=np.uint8), 16)


def test_seeded_views_independent_of_batch() -> None:
    imgs = _images(5)
    keys = [f"img-{i}" for i in range(5)]
    full = seeded_views(imgs, keys, views=3, seed=7, image_size=16)
    assert full.shape == (3, 5, 3, 16, 16)
    # key img-3 alone, and in a differently ordered batch, gives the same views
    alone = seeded_views(imgs[3:4], keys[3:4], views=3, seed=7, image_size=16)
    assert torch.equal(alone[:, 0], full[:, 3])
    perm = [4, 3, 0]
    mixed = seeded_views(imgs[perm], [keys[i] for i in perm], views=3, seed=7, image_size=16)
    assert torch.equal(mixed[:, 1], full[:, 3])
    assert torch.equal(mixed[:, 0], full[:, 4])
    # views differ from each other, and another seed gives other views
    assert not torch.equal(full[0, 3], full[1, 3])
    other = seeded_views(imgs[3:4], keys[3:4], views=3, seed=8, image_size=16)
    assert not torch.equal(other[:, 0], full[:, 3])


def test_seeded_views_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seeded_views(_images(2), ["a", "b"], views=2, seed=0, image_size=16)
    assert torch.equal(torch.rand(3), expected)


def test_blur_only_for_large_images() -> None:
    def has_blur(t) -> bool:
        return "GaussianBlur" in repr(t)

    assert not has_blur(simclr_transform(32))
    assert not has_blur(simclr_transform(64))
    assert has_blur(simclr_transform(96))
    big = augment_batch(_images(2, size=96), 96)
    assert big.shape == (2, 3, 96, 96) and torch.isfinite(big).all()
