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
    expect = (
        torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
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


# ---------------------------------------------------------------------------------- batched implementation

from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

from mak_ray import augment as A  # noqa: E402


def _float_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32))


def test_seeded_views_independent_of_batch_with_blur() -> None:
    imgs = _images(5, size=72)
    keys = [f"k{i}" for i in range(5)]
    full = seeded_views(imgs, keys, views=4, seed=1, image_size=72)
    alone = seeded_views(imgs[2:3], keys[2:3], views=4, seed=1, image_size=72)
    mixed = seeded_views(imgs[[4, 2]], [keys[4], keys[2]], views=4, seed=1, image_size=72)
    assert torch.equal(alone[:, 0], full[:, 2]) and torch.equal(mixed[:, 1], full[:, 2])
    assert torch.equal(mixed[:, 0], full[:, 4])


def test_output_shape_dtype_and_range() -> None:
    mean, std = torch.tensor(MEAN).view(1, 1, 3, 1, 1), torch.tensor(STD).view(1, 1, 3, 1, 1)
    for size in (16, 72):
        v = seeded_views(_images(3, size=size), ["a", "b", "c"], views=5, seed=0, image_size=size)
        assert v.shape == (5, 3, 3, size, size) and v.dtype == torch.float32
        pixels = v * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # crop + resize from a larger source
    assert augment_batch(_images(2, size=20), 16).shape == (2, 3, 16, 16)


def test_augment_batch_follows_torch_seed() -> None:
    imgs = _images(3)
    torch.manual_seed(5)
    a = augment_batch(imgs, 16)
    torch.manual_seed(5)
    assert torch.equal(augment_batch(imgs, 16), a)


def test_resized_crop_matches_torchvision() -> None:
    img = _float_images(4, 40)
    boxes = torch.tensor([[3, 5, 20, 17], [0, 0, 40, 40], [10, 2, 30, 11], [39, 39, 1, 1]])
    flip = torch.tensor([False, True, False, True])
    for size in (32, 16):  # up- and down-scaling
        out = A._resized_crop(img, torch.arange(4), boxes, flip, size)
        for i in range(4):
            ref = F.resized_crop(img[i], *boxes[i].tolist(), [size, size], antialias=False)
            ref = F.horizontal_flip(ref) if flip[i] else ref
            assert torch.allclose(out[i], ref, atol=1e-5), (size, i)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(name: str) -> None:
    img = _float_images(6, 24)
    img[1, :, :8] = img[1, :1, :8]  # grey pixels (hue undefined)
    img[2, 0] = 1.0  # saturated channel
    factors = (
        torch.tensor([-0.1, 0.0, 0.05, 0.1, -0.5, 0.5])
        if name == "hue"
        else torch.tensor([0.6, 1.0, 1.4, 0.8, 0.0, 2.0])
    )
    out = getattr(A, f"adjust_{name}")(img.clone(), factors)
    ref = torch.stack([getattr(F, f"adjust_{name}")(img[i], factors[i].item()) for i in range(6)])
    assert torch.allclose(out, ref, atol=1e-5)


def test_grayscale_and_blur_match_torchvision() -> None:
    img = _float_images(3, 80)
    assert torch.allclose(A._grayscale(img), F.rgb_to_grayscale(img), atol=1e-6)
    sigma = torch.tensor([0.1, 0.9, 2.0])
    k = A.blur_kernel_size(80)
    out = A._gaussian_blur(img, sigma, k)
    ref = torch.stack([F.gaussian_blur(img[i], [k, k], [sigma[i].item()] * 2) for i in range(3)])
    assert torch.allclose(out, ref, atol=1e-5)


def _reference_item(img: torch.Tensor, p: A._Params, i: int, size: int) -> torch.Tensor:
    """One item through torchvision's functional ops with the batched path's parameters."""
    x = F.resized_crop(img, *p.boxes[i].tolist(), [size, size], antialias=False)
    if p.flip[i]:
        x = F.horizontal_flip(x)
    if p.jitter[i]:
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for op_id in p.order[i].tolist():
            x = ops[op_id](x, p.factors[i, op_id].item())
    if p.gray[i]:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur[i]:
        k = A.blur_kernel_size(size)
        x = F.gaussian_blur(x, [k, k], [p.sigma[i].item()] * 2)
    return F.normalize(x, list(MEAN), list(STD))


def test_whole_pipeline_matches_torchvision_composition() -> None:
    size, n = 72, 24
    imgs = _images(3, size=size, seed=3)
    u = A.view_uniforms([A.view_seed(0, f"x{i}", 0) for i in range(n)])
    sample = np.arange(n) % 3
    out = A._augment_items(A._as_chw_batch(imgs), sample, u, size, torch.empty(n, 3, size, size))
    p = A._Params(u, size, size, size)
    src = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    assert p.jitter.any() and p.blur.any() and p.gray.any() and p.flip.any()
    for i in range(n):
        assert torch.allclose(out[i], _reference_item(src[sample[i]], p, i, size), atol=1e-4), i


def test_crop_fallback_is_torchvision_centre_crop() -> None:
    u = np.zeros((2, A.N_UNIFORMS))
    u[:, A._U_CROP : A._U_CROP + 4 * A.CROP_ATTEMPTS] = 0.999  # full area at ratio 4/3: never fits
    assert A.crop_boxes(u, 32, 32).tolist() == [[0, 0, 32, 32]] * 2
    # too wide: height kept, width = round(20 * 4/3); too tall: width kept, height = round(20 / (3/4))
    assert A.crop_boxes(u, 20, 40)[0].tolist() == [0, 6, 20, 27]
    assert A.crop_boxes(u, 40, 20)[0].tolist() == [6, 0, 27, 20]


def test_sampled_parameter_statistics() -> None:
    n, size = 4000, 224
    u = A.view_uniforms([A.view_seed(11, f"s{i}", i % 7) for i in range(n)])
    p = A._Params(u, size, size, size)
    top, left, h, w = p.boxes.numpy().T
    area = h * w / size**2
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    assert area.min() >= 0.075 and area.max() <= 1.0  # scale (0.08, 1) up to integer rounding
    assert area.min() < 0.1 and area.max() > 0.95
    # ratio (3/4, 4/3) up to rounding; the fallback is the square full image
    assert (w / h >= 0.74).all() and (w / h <= 1.35).all()
    # same area distribution as torchvision's own sampler (rejections of big boxes pull the mean below 0.54)
    rrc = v2.RandomResizedCrop(size, scale=A.CROP_SCALE, ratio=A.CROP_RATIO)
    torch.manual_seed(0)
    tv = [rrc.make_params([torch.zeros(3, size, size)]) for _ in range(2000)]
    tv_area = np.array([d["height"] * d["width"] for d in tv]) / size**2
    assert abs(area.mean() - tv_area.mean()) < 0.035 and abs(np.median(area) - np.median(tv_area)) < 0.05

    def rate_ok(mask: torch.Tensor, p_expected: float) -> bool:
        sd = (p_expected * (1 - p_expected) / n) ** 0.5
        return abs(mask.float().mean().item() - p_expected) < 4.5 * sd

    assert rate_ok(p.flip, A.FLIP_P) and rate_ok(p.jitter, A.JITTER_P) and rate_ok(p.gray, A.GRAY_P)
    assert rate_ok(p.blur, A.BLUR_P)
    f = p.factors.numpy()
    assert (f[:, :3] >= 0.6).all() and (f[:, :3] <= 1.4).all() and (np.abs(f[:, 3]) <= 0.1).all()
    assert np.allclose(f.mean(0), [1, 1, 1, 0], atol=0.02)
    perms = {tuple(r) for r in p.order.tolist()}
    assert len(perms) == 24  # every order of the four jitter ops occurs
    assert (p.sigma >= 0.1).all() and (p.sigma <= 2.0).all()
    assert not A._Params(u[:100], 64, 64, 64).blur.any()  # no blur at 64 px and below
