"""Frames for cropping: aspect kept, shorter side capped at decode_size, elongated images cut to MAX_ASPECT : 1,
square datasets unchanged; the Arrow column Ray Data carries them in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from mak_ray.augment import ImageBatch, seeded_views
from mak_ray.data.decode import (
    MAX_ASPECT,
    decode_frame,
    decode_image,
    default_decode_size,
    frames_column,
    max_frame_pixels,
)
from tests.samples import bad_inputs, encode


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.BILINEAR)


def test_default_decode_size() -> None:
    assert default_decode_size(224) == 258 and default_decode_size(28) == 33 and default_decode_size(32) == 37


@pytest.mark.parametrize(
    "width,height,want",
    [
        (500, 375, (258, 344)),  # landscape: shorter side to 258, aspect kept
        (375, 500, (344, 258)),  # portrait
        (300, 300, (258, 258)),
        (200, 150, (150, 200)),  # already smaller: kept as it is
        (1000, 200, (200, 400)),  # 5:1 kept at its own scale, cut to 2:1
        (3000, 600, (258, 516)),  # 5:1, scaled and cut to 2:1
        (1, 1, (1, 1)),
        (1, 7, (2, 1)),
    ],
)
def test_frame_shape(width: int, height: int, want: tuple[int, int]) -> None:
    for fmt in ("PNG", "JPEG"):
        arr, err = decode_frame(encode(_photo(width, height), fmt), 258, 10**7)
        assert err is None and arr.dtype == np.uint8 and arr.shape == (*want, 3), (fmt, arr.shape)
        assert max(arr.shape[:2]) <= MAX_ASPECT * min(arr.shape[:2])
        assert arr.shape[0] * arr.shape[1] <= max_frame_pixels(258)


def test_frame_keeps_the_centre_of_elongated_images() -> None:
    img = np.zeros((100, 500, 3), np.uint8)
    img[:, 150:350] = 255  # a white centre band of 200 px, the 2:1 part of a 5:1 image
    arr, _ = decode_frame(encode(Image.fromarray(img), "PNG"), 258, 10**7)
    assert arr.shape == (100, 200, 3) and arr.min() == 255
    tall = np.ascontiguousarray(img.transpose(1, 0, 2))
    arr, _ = decode_frame(encode(Image.fromarray(tall), "PNG"), 258, 10**7)
    assert arr.shape == (200, 100, 3) and arr.min() == 255


def test_square_images_at_image_size_decode_as_today() -> None:
    """The demos' square images at image_size: the frame is today's decoded image, pixel for pixel."""
    for size in (16, 28, 224):
        for fmt in ("PNG", "JPEG"):
            data = encode(_photo(size, size, seed=size), fmt)
            frame, _ = decode_frame(data, default_decode_size(size), 10**7)
            square, _ = decode_image(data, size, 10**7)
            assert np.array_equal(frame, square), (size, fmt)


def test_resize_matches_pillow_on_the_source() -> None:
    img = _photo(640, 480, seed=3)
    arr, _ = decode_frame(encode(img, "PNG"), 100, 10**7)
    want = np.asarray(img.resize((133, 100), Image.BILINEAR))
    assert arr.shape == want.shape and np.abs(arr.astype(int) - want).max() <= 1


@pytest.mark.parametrize("name", sorted(bad_inputs()))
def test_awkward_files_fail_with_the_same_reason_as_square_decoding(name: str) -> None:
    data, expected = bad_inputs()[name]
    arr, reason = decode_frame(data, 37, 1_000_000)
    assert reason == expected == decode_image(data, 32, 1_000_000)[1]
    assert (arr is None) == (expected is not None)
    if arr is not None:
        assert arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) <= 37


def test_frames_column_round_trips_through_arrow_and_ray_data(ray_session) -> None:
    """Ray Data carries frames of mixed sizes in one column; a batch comes back as an object array of frames,
    which gives the same views as the frames themselves."""
    import ray

    from mak_ray.train.loop import as_image_array

    rng = np.random.default_rng(1)
    ragged = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(20, 30), (30, 20), (24, 24)]]
    square = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(2)]
    col = frames_column(square)
    assert col.to_numpy().shape == (2, 24, 24, 3)  # equal sizes: the plain tensor layout of today
    tables = [
        pa.table({"id": pa.array(["a", "b", "c"]), "image": frames_column(ragged)}),
        pa.table({"id": pa.array(["d", "e"]), "image": col}),
    ]
    frames = dict(zip("abcde", ragged + square))
    seen = 0
    for b in ray.data.from_arrow(tables).iter_batches(batch_size=5, batch_format="numpy"):
        keys = [str(k) for k in b["id"]]
        for k, f in zip(keys, b["image"]):
            assert np.array_equal(f, frames[k])
        got = seeded_views(ImageBatch.from_frames(as_image_array(b["image"])), keys, 2, 0, 16)
        assert torch.equal(got, seeded_views([frames[k] for k in keys], keys, 2, 0, 16))
        seen += len(keys)
    assert seen == 5
