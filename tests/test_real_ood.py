"""Real near-OOD kinds (digits, faces, photo objects): offline, seeded, in the target's look, distinct."""

from __future__ import annotations

import socket

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

from mak_ray.demo import real_ood  # noqa: E402
from mak_ray.demo.ood import ALL_OOD_KINDS, OOD_KINDS, make_ood_images  # noqa: E402
from mak_ray.demo.real_ood import REAL_OOD_KINDS  # noqa: E402


def test_real_kinds_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for loader in (real_ood.digit_images, real_ood.face_images, real_ood.photo_images):
        loader.cache_clear()
    images, labels = make_ood_images(9, size=28, seed=1, kinds=REAL_OOD_KINDS)
    assert images.shape == (9, 28, 28) and labels == list(REAL_OOD_KINDS) * 3
    assert len(real_ood.face_images()) == 100 and len(real_ood.photo_images()) >= 10


def test_real_kinds_are_seeded_and_independent_of_count() -> None:
    a, la = make_ood_images(12, size=28, seed=3, kinds=REAL_OOD_KINDS)
    b, lb = make_ood_images(12, size=28, seed=3, kinds=REAL_OOD_KINDS)
    c, _ = make_ood_images(12, size=28, seed=4, kinds=REAL_OOD_KINDS)
    few, _ = make_ood_images(5, size=28, seed=3, kinds=REAL_OOD_KINDS)
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)
    assert np.array_equal(few, a[:5])


@pytest.mark.parametrize("kind", REAL_OOD_KINDS)
def test_real_kind_is_an_object_on_a_dark_background(kind: str) -> None:
    images, labels = make_ood_images(200, size=28, seed=0, kinds=(kind,))
    assert set(labels) == {kind}
    x = images.astype(np.float64)
    border = np.concatenate([x[:, :2].reshape(200, -1), x[:, -2:].reshape(200, -1)], axis=1).mean(1)
    centre = x[:, 9:19, 9:19].reshape(200, -1).mean(1)
    assert np.median(border) < 15 and np.mean(border < 60) > 0.95, "the top and bottom rows stay mostly dark"
    assert np.mean(centre > border + 30) > 0.7, "the centre mostly holds a bright object"
    assert len({img.tobytes() for img in images}) >= 195, "crops and transforms make the images distinct"


def test_mixed_kinds_and_rgb() -> None:
    kinds = OOD_KINDS + REAL_OOD_KINDS
    assert set(kinds) == set(ALL_OOD_KINDS)
    images, labels = make_ood_images(12, size=32, seed=0, channels=3, kinds=kinds)
    assert images.shape == (12, 32, 32, 3)
    assert labels == list(kinds) * 2
    real = [i for i, k in enumerate(labels) if k in REAL_OOD_KINDS]
    assert all(np.array_equal(images[i, ..., 0], images[i, ..., 2]) for i in real)  # gray in three channels


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown OOD kinds"):
        make_ood_images(3, kinds=("ood-cats",))
