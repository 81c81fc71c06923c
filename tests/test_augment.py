"""Augmentations: the device path against the CPU implementation it replaced and against torchvision's definitions;
crops drawn in frames of any size; seeded views independent of batching and padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mak_ray import augment as A
from mak_ray.augment import (
    MEAN,
    STD,
    ImageBatch,
    ViewParams,
    augment_batch,
    clean_batch,
    crop_boxes,
    seeded_views,
)
from tests import reference_augment as ref
from tests.reference_augment import clean_transform, simclr_transform


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _frames(shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


# ---------------------------------------------------------------------------------- today's views, unchanged


@pytest.mark.parametrize("size", [16, 28, 72, 224])
def test_square_inputs_at_image_size_give_todays_views_bit_for_bit(size: int) -> None:
    n = 3 if size == 224 else 6
    imgs = _images(n, size, seed=size)
    keys = [f"s3://pool/{size}/{i}.jpg" for i in range(n)]
    new = seeded_views(imgs, keys, views=10, seed=4, image_size=size)
    old = ref.seeded_views(imgs, keys, 10, 4, size)
    assert torch.equal(new, old)
    assert torch.equal(clean_batch(imgs, size), ref.clean_batch(imgs, size))
    torch.manual_seed(9)
    new_train = augment_batch(imgs, size)
    torch.manual_seed(9)
    assert torch.equal(new_train, ref.augment_batch(imgs, size))
    # the same through a padded batch object (what the scorer and the trainer hand over)
    assert torch.equal(seeded_views(ImageBatch.from_frames(list(imgs)), keys, 10, 4, size), old)


def test_view_uniforms_equal_numpy_philox() -> None:
    rng = np.random.default_rng(0)
    seeds = np.concatenate([rng.integers(0, 2**63, 500, dtype=np.uint64), [0, 1, 2**63 - 1]]).astype(
        np.uint64
    )
    want = np.stack([np.random.Generator(np.random.Philox(key=int(s))).random(A.N_UNIFORMS) for s in seeds])
    assert np.array_equal(A.view_uniforms(seeds), want)
    assert A.view_uniforms([]).shape == (0, A.N_UNIFORMS)


# ---------------------------------------------------------------------------------- shapes and seeding


def test_augment_batch_shape_and_randomness() -> None:
    imgs = _images(6)
    a = augment_batch(imgs, 16)
    b = augment_batch(imgs, 16)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # two calls, two views
    same = np.repeat(imgs[:1], 4, axis=0)  # identical inputs still get different per-image augmentations
    v = augment_batch(same, 16)
    assert not all(torch.equal(v[0], v[i]) for i in range(1, 4))


def test_clean_batch_is_normalised_identity_at_image_size() -> None:
    imgs = _images(3)
    x = clean_batch(imgs, 16)
    expect = (
        torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-6)
    t = clean_transform(16)(torch.from_numpy(imgs[0]).permute(2, 0, 1))
    assert torch.allclose(t, expect[0], atol=1e-6)


def test_clean_view_is_centre_square_resized() -> None:
    """Resize the shorter side, centre crop: the centred min(h, w) square of each frame, resized to S."""
    frames = _frames([(20, 30), (40, 18), (16, 16)], seed=2)
    out = clean_batch(frames, 16)
    assert out.shape == (3, 3, 16, 16)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for i, f in enumerate(frames):
        h, w = f.shape[:2]
        side = min(h, w)
        img = torch.from_numpy(f).permute(2, 0, 1).float() / 255
        want = F.resized_crop(img, (h - side) // 2, (w - side) // 2, side, side, [16, 16], antialias=False)
        assert torch.allclose(out[i], (want - mean) / std, atol=1e-5), i
    # a wide frame's clean view does not see its left and right margins
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, :8] = 255
    wide[:, 24:] = 255
    centre = clean_batch([wide], 16) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(
        1, 3, 1, 1
    )
    assert centre.abs().max() < 1e-5


def test_read_only_input_is_accepted() -> None:
    imgs = _images(2)
    imgs.flags.writeable = False
    assert augment_batch(imgs, 16).shape == (2, 3, 16, 16)


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        clean_batch(np.zeros((2, 16, 16, 3), dtype=np.float32), 16)
    with pytest.raises(ValueError, match="uint8"):
        clean_batch([np.zeros((16, 16, 3), dtype=np.float32)], 16)
    with pytest.raises(ValueError, match=r"\[B, S, S, 3\]"):
        augment_batch(np.zeros((16, 16, 3), dtype=np.uint8), 16)
    with pytest.raises(ValueError, match=r"\[h, w, 3\]"):
        augment_batch([np.zeros((16, 16), dtype=np.uint8)], 16)
    with pytest.raises(ValueError, match="zero"):
        augment_batch([np.zeros((0, 16, 3), dtype=np.uint8)], 16)


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


def test_seeded_views_of_frames_independent_of_padding_and_batch() -> None:
    """Frames of different sizes share a padded canvas: a frame's views do not depend on its neighbours."""
    frames = _frames([(83, 110), (110, 83), (83, 83), (40, 80), (96, 72)], seed=5)
    keys = [f"k{i}" for i in range(5)]
    full = seeded_views(frames, keys, views=4, seed=1, image_size=72)
    assert full.shape == (4, 5, 3, 72, 72) and torch.isfinite(full).all()
    for i in range(5):
        alone = seeded_views([frames[i]], [keys[i]], views=4, seed=1, image_size=72)
        assert torch.equal(alone[:, 0], full[:, i]), i
    assert torch.equal(clean_batch(frames[1:2], 72)[0], clean_batch(frames, 72)[1])


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


def test_output_shape_dtype_and_range() -> None:
    mean, std = torch.tensor(MEAN).view(1, 1, 3, 1, 1), torch.tensor(STD).view(1, 1, 3, 1, 1)
    for size in (16, 72):
        v = seeded_views(_images(3, size=size), ["a", "b", "c"], views=5, seed=0, image_size=size)
        assert v.shape == (5, 3, 3, size, size) and v.dtype == torch.float32
        pixels = v * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert augment_batch(_images(2, size=20), 16).shape == (2, 3, 16, 16)  # crop + resize from a larger frame


def test_augment_batch_follows_torch_seed() -> None:
    imgs = _images(3)
    torch.manual_seed(5)
    a = augment_batch(imgs, 16)
    torch.manual_seed(5)
    assert torch.equal(augment_batch(imgs, 16), a)


# ---------------------------------------------------------------------------------- ops against torchvision


def _float_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32))


def test_resized_crop_matches_torchvision() -> None:
    img = _float_images(4, 40)
    boxes = torch.tensor([[3, 5, 20, 17], [0, 0, 40, 40], [10, 2, 30, 11], [39, 39, 1, 1]])
    flip = torch.tensor([False, True, False, True])
    for size in (32, 16):  # up- and down-scaling
        out = A.resized_crop(img, torch.arange(4), boxes, flip, size)
        for i in range(4):
            ref_i = F.resized_crop(img[i], *boxes[i].tolist(), [size, size], antialias=False)
            ref_i = F.horizontal_flip(ref_i) if flip[i] else ref_i
            assert torch.allclose(out[i], ref_i, atol=1e-5), (size, i)


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
    want = torch.stack([getattr(F, f"adjust_{name}")(img[i], factors[i].item()) for i in range(6)])
    assert torch.allclose(out, want, atol=1e-5)


def test_grayscale_and_blur_match_torchvision() -> None:
    img = _float_images(3, 80)
    assert torch.allclose(A._grayscale(img), F.rgb_to_grayscale(img), atol=1e-6)
    sigma = torch.tensor([0.1, 0.9, 2.0])
    k = A.blur_kernel_size(80)
    out = A._gaussian_blur(img, sigma, k)
    want = torch.stack([F.gaussian_blur(img[i], [k, k], [sigma[i].item()] * 2) for i in range(3)])
    assert torch.allclose(out, want, atol=1e-5)


def _reference_item(img: torch.Tensor, p: ViewParams, i: int, size: int) -> torch.Tensor:
    """One item through torchvision's functional ops with the batched path's parameters."""
    x = F.resized_crop(img, *p.boxes[i].tolist(), [size, size], antialias=False)
    if p.flip[i]:
        x = F.horizontal_flip(x)
    if p.jitter[i]:
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for op_id in p.order[i].tolist():
            x = ops[op_id](x, float(p.factors[i, op_id]))
    if p.gray[i]:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur[i]:
        k = A.blur_kernel_size(size)
        x = F.gaussian_blur(x, [k, k], [float(np.float32(p.sigma[i]))] * 2)
    return F.normalize(x, list(MEAN), list(STD))


def test_whole_pipeline_on_frames_matches_torchvision_composition() -> None:
    size, n = 72, 24
    frames = _frames([(83, 110), (72, 72), (120, 80)], seed=3)
    batch = ImageBatch.from_frames(frames)
    sample = np.arange(n) % 3
    u = A.view_uniforms([A.view_seed(0, f"x{i}", 0) for i in range(n)])
    p = ViewParams.draw(u, sample, batch.sizes, size)
    out = A.render_views(batch, p, size, torch.empty(n, 3, size, size))
    assert p.jitter.any() and p.blur.any() and p.gray.any() and p.flip.any()
    for i in range(n):
        h, w = batch.sizes[sample[i]]
        top, left, bh, bw = p.boxes[i]
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w  # inside the row's own frame
        src = torch.from_numpy(frames[sample[i]]).permute(2, 0, 1).float() / 255
        assert torch.allclose(out[i], _reference_item(src, p, i, size), atol=1e-4), i


# ---------------------------------------------------------------------------------- crop boxes


def _torchvision_get_params(u: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` line by line, its random draws taken from ``u`` in order:
    ``uniform_(a, b)`` = a + (b - a) u and ``randint(0, k)`` = floor(u k)."""
    area = height * width
    log_ratio = (math.log(A.CROP_RATIO[0]), math.log(A.CROP_RATIO[1]))
    for attempt in range(10):
        us, ur, ui, uj = u[4 * attempt : 4 * attempt + 4]
        target_area = area * (A.CROP_SCALE[0] + (A.CROP_SCALE[1] - A.CROP_SCALE[0]) * us)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * ur)
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(math.floor(ui * (height - h + 1))), int(math.floor(uj * (width - w + 1))), h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(A.CROP_RATIO):
        w = width
        h = int(round(w / min(A.CROP_RATIO)))
    elif in_ratio > max(A.CROP_RATIO):
        h = height
        w = int(round(h * max(A.CROP_RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_boxes_follow_torchvision_in_frames_of_any_shape() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    u = A.view_uniforms([A.view_seed(2, f"b{i}", 0) for i in range(n)])
    u[:300, : 4 * A.CROP_ATTEMPTS] = 0.999  # big boxes at ratio 4/3: the fallback on most frames
    heights = rng.integers(1, 400, n)
    widths = np.clip((heights * rng.uniform(0.3, 3.0, n)).astype(np.int64), 1, None)
    widths[:20] = 1  # degenerate frames
    got = crop_boxes(u, heights, widths)
    want = np.array([_torchvision_get_params(u[i], int(heights[i]), int(widths[i])) for i in range(n)])
    assert np.array_equal(got, want)


def test_crop_fallback_is_torchvision_centre_crop() -> None:
    u = np.zeros((2, A.N_UNIFORMS))
    u[:, A.U_CROP : A.U_CROP + 4 * A.CROP_ATTEMPTS] = 0.999  # full area at ratio 4/3: never fits
    assert crop_boxes(u, 32, 32).tolist() == [[0, 0, 32, 32]] * 2
    # too wide: height kept, width = round(20 * 4/3); too tall: width kept, height = round(20 / (3/4))
    assert crop_boxes(u, 20, 40)[0].tolist() == [0, 6, 20, 27]
    assert crop_boxes(u, 40, 20)[0].tolist() == [6, 0, 27, 20]


@pytest.mark.parametrize("height,width", [(224, 224), (258, 344)])
def test_sampled_parameter_statistics(height: int, width: int) -> None:
    n, size = 4000, 224
    u = A.view_uniforms([A.view_seed(11, f"s{i}", i % 7) for i in range(n)])
    p = ViewParams.draw(u, np.zeros(n, dtype=np.int64), np.array([[height, width]]), size)
    top, left, h, w = p.boxes.T
    area = h * w / (height * width)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert area.min() >= 0.075 and area.max() <= 1.0  # scale (0.08, 1) up to integer rounding
    assert area.min() < 0.1 and area.max() > 0.7
    assert (w / h >= 0.74).all() and (w / h <= 1.35).all()  # ratio (3/4, 4/3) up to rounding
    # same area distribution as torchvision's own sampler on a frame of this shape
    rrc = v2.RandomResizedCrop(size, scale=A.CROP_SCALE, ratio=A.CROP_RATIO)
    torch.manual_seed(0)
    tv = [rrc.make_params([torch.zeros(3, height, width)]) for _ in range(2000)]
    tv_area = np.array([d["height"] * d["width"] for d in tv]) / (height * width)
    assert abs(area.mean() - tv_area.mean()) < 0.035 and abs(np.median(area) - np.median(tv_area)) < 0.05

    def rate_ok(mask: np.ndarray, p_expected: float) -> bool:
        sd = (p_expected * (1 - p_expected) / n) ** 0.5
        return abs(mask.mean() - p_expected) < 4.5 * sd

    assert rate_ok(p.flip, A.FLIP_P) and rate_ok(p.jitter, A.JITTER_P) and rate_ok(p.gray, A.GRAY_P)
    assert rate_ok(p.blur, A.BLUR_P)
    f = p.factors
    assert (f[:, :3] >= 0.6).all() and (f[:, :3] <= 1.4).all() and (np.abs(f[:, 3]) <= 0.1).all()
    assert np.allclose(f.mean(0), [1, 1, 1, 0], atol=0.02)
    assert len({tuple(r) for r in p.order.tolist()}) == 24  # every order of the four jitter ops occurs
    assert (p.sigma >= 0.1).all() and (p.sigma <= 2.0).all()
    assert not ViewParams.draw(u[:100], np.zeros(100, np.int64), np.array([[64, 64]]), 64).blur.any()
