"""The device scoring path on the CPU in float32 against the path it replaced (CPU views, numpy normalisation,
CPU bank ECLE, numpy proximity): equal to 1e-5 on square inputs; unusable rows flagged; batching irrelevant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mak_ray.config import ModelSection
from mak_ray.mak.ecle import BankECLE, keys_to_u64, window_mask
from mak_ray.mak.gate import nn_distance
from mak_ray.mak.proximity import proximity
from mak_ray.models import build_model
from mak_ray.score.device import DeviceParams, DeviceScorer, nearest_similarity, score_batch
from tests import reference_augment as ref_aug
from tests import reference_ecle

SIZE = 32
PARAMS = DeviceParams(image_size=SIZE, views=10, seed=3, temperature=0.2, ecle_batch_size=32, ecle_repeats=4)
TARGETS = np.random.default_rng(11).normal(size=(50, 64)).astype(np.float32)  # the target images' embeddings


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSection(arch="resnet18", width=8, small_stem=True, proj_dim=16)).eval()


@pytest.fixture(scope="module")
def bank_and_centroids() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    bank = _unit(rng.normal(size=(PARAMS.views, 40, 16))).astype(np.float32)
    return bank, rng.normal(size=(5, 64)).astype(np.float32)


def _run(fn, x: torch.Tensor) -> np.ndarray:
    """The replaced scorer's model call: chunks of 256, float32 numpy."""
    with torch.inference_mode():
        return torch.cat([fn(x[s : s + 256]).float() for s in range(0, x.shape[0], 256)]).numpy()


def reference_columns(model, images, keys, bank, centroids, p: DeviceParams) -> dict[str, np.ndarray]:
    """The replaced scorer (``PoolScorer.projections / embeddings / _score``) on square frames, step for step."""
    v = ref_aug.seeded_views(images, keys, p.views, p.seed, p.image_size)
    r, b = v.shape[:2]
    z = _run(model, v.reshape(r * b, *v.shape[2:])).reshape(r, b, -1)
    z = z / np.maximum(np.linalg.norm(z, axis=2, keepdims=True), 1e-12)
    emb = _run(model.embed, ref_aug.clean_batch(images, p.image_size))
    zn = z / np.linalg.norm(z, axis=-1)[..., None]  # ecle() scales its inputs again
    bn = bank / np.linalg.norm(bank, axis=-1)[..., None]
    n_neg = min(p.ecle_batch_size - 1, bank.shape[1])
    e = reference_ecle.ecle_bank(
        torch.from_numpy(zn),
        torch.from_numpy(bn),
        keys_to_u64(keys, len(keys)),
        p.temperature,
        n_neg,
        p.ecle_repeats,
        p.seed,
    )
    return {
        "projections": z,
        "embedding": emb,
        "ecle": e,
        "proximity": proximity(emb, centroids),
        "nn_distance": nn_distance(emb, TARGETS),
    }


def _images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_device_path_on_cpu_equals_the_replaced_path(model, bank_and_centroids) -> None:
    bank, centroids = bank_and_centroids
    images = _images(6)
    keys = [f"s3://pool/img-{i}.png" for i in range(6)]
    want = reference_columns(model, images, keys, bank, centroids, PARAMS)
    scorer = DeviceScorer(model, PARAMS, "cpu", bank, centroids, TARGETS)
    got = next(scorer.run([(images, keys)]))
    np.testing.assert_allclose(got["ecle"], want["ecle"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["proximity"], want["proximity"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["nn_distance"], want["nn_distance"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["embedding"], want["embedding"], rtol=1e-5, atol=1e-5)
    assert not got["bad_embedding"].any() and not got["bad_projection"].any()
    assert got["ecle"].dtype == np.float64 and got["embedding"].dtype == np.float32
    # the bank and embed modes of the same scorer
    proj = next(scorer.run([(images, keys)], mode="bank"))["projections"]
    np.testing.assert_allclose(proj, want["projections"], rtol=0, atol=1e-5)
    emb = next(scorer.run([(images, keys)], mode="embed"))
    np.testing.assert_allclose(emb["embedding"], want["embedding"], rtol=1e-5, atol=1e-5)
    # the one-batch function the scorer actor's step is made of
    one = score_batch(
        scorer.model, scorer.stage(images), keys, scorer.bank, scorer.centroids, scorer.targets, PARAMS
    )
    assert all(np.array_equal(one[k], got[k], equal_nan=True) for k in got)


def test_scores_independent_of_batching_and_pipelining(model, bank_and_centroids) -> None:
    """Frames of mixed sizes in batches of different composition, two in flight, give the same columns."""
    bank, centroids = bank_and_centroids
    rng = np.random.default_rng(3)
    shapes = [(37, 49), (49, 37), (37, 37), (30, 60), (45, 40), (37, 74), (20, 25)]
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    keys = [f"k{i}" for i in range(len(frames))]
    scorer = DeviceScorer(model, PARAMS, "cpu", bank, centroids, TARGETS)
    whole = next(scorer.run([(frames, keys)]))
    order = [6, 2, 0, 5, 1, 4, 3]
    parts = [order[:3], order[3:4], order[4:]]
    outs = list(scorer.run([([frames[i] for i in p], [keys[i] for i in p]) for p in parts]))
    assert len(outs) == 3
    for p, out in zip(parts, outs):
        for col in ("ecle", "proximity", "nn_distance"):
            np.testing.assert_allclose(out[col], whole[col][p], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out["embedding"], whole["embedding"][p], rtol=1e-5, atol=1e-6)
    assert np.isfinite(whole["ecle"]).all() and np.isfinite(whole["proximity"]).all()


class _Faulty(torch.nn.Module):
    """The model, but a zero embedding for dark inputs and NaN projections for bright ones."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        e = self.base.embed(x)
        return torch.where((x.mean(dim=(1, 2, 3)) < -1.5)[:, None], torch.zeros_like(e), e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x)
        return torch.where((x.mean(dim=(1, 2, 3)) > 2.0)[:, None], torch.full_like(z, float("nan")), z)


def test_unusable_rows_are_flagged_and_leave_the_others_alone(model, bank_and_centroids) -> None:
    bank, centroids = bank_and_centroids
    images = _images(5, seed=4)
    images[1] = 0  # black: zero embedding
    images[3] = 255  # white: some view stays white, its projection is NaN
    keys = [f"r{i}" for i in range(5)]
    faulty = _Faulty(model).eval()
    got = next(DeviceScorer(faulty, PARAMS, "cpu", bank, centroids, TARGETS).run([(images, keys)]))
    assert got["bad_embedding"].tolist() == [False, True, False, False, False]
    assert got["bad_projection"][3] and not got["bad_projection"][[0, 2, 4]].any()
    assert np.isnan(got["ecle"][[1, 3]]).all() and np.isnan(got["proximity"][[1, 3]]).all()
    good = [0, 2, 4]  # the replaced scorer dropped the bad rows first: same numbers for the rest
    want = reference_columns(model, images[good], [keys[i] for i in good], bank, centroids, PARAMS)
    np.testing.assert_allclose(got["ecle"][good], want["ecle"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["proximity"][good], want["proximity"], rtol=0, atol=1e-5)


def test_nearest_target_in_blocks_equals_one_matrix() -> None:
    rng = np.random.default_rng(5)
    u = torch.from_numpy(_unit(rng.normal(size=(9, 64))).astype(np.float32))
    t = torch.from_numpy(_unit(TARGETS))
    whole = (u @ t.T).amax(dim=1)
    torch.testing.assert_close(nearest_similarity(u, t, block=7), whole, rtol=0, atol=1e-6)  # 8 blocks


def test_empty_batch(model, bank_and_centroids) -> None:
    bank, centroids = bank_and_centroids
    got = next(DeviceScorer(model, PARAMS, "cpu", bank, centroids, TARGETS).run([([], [])]))
    assert got["ecle"].shape == (0,) and got["embedding"].shape == (0, 64)


def test_score_mode_needs_bank_and_centroids(model) -> None:
    with pytest.raises(ValueError, match="bank"):
        next(DeviceScorer(model, PARAMS, "cpu").run([(_images(1), ["a"])]))


# ---------------------------------------------------------------------------------- ECLE on a device


def test_bank_ecle_equals_the_replaced_cpu_bank_ecle() -> None:
    rng = np.random.default_rng(5)
    z = torch.from_numpy(_unit(rng.normal(size=(10, 50, 128))).astype(np.float32))
    bank = torch.from_numpy(_unit(rng.normal(size=(10, 600, 128))).astype(np.float32))
    keys = keys_to_u64([f"s3://pool/{i}.jpg" for i in range(50)], 50)
    want = reference_ecle.ecle_bank(z, bank, keys, 0.2, 511, 10, 1)
    for chunk in (None, 10 * 10 * 600 * 7):  # one chunk per call, and chunks of 7 samples
        engine = BankECLE(bank, temperature=0.2, n_neg=511, repeats=10, seed=1, chunk_elements=chunk)
        got = engine(z, keys)
        assert got.dtype == torch.float64 and got.device.type == "cpu"
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


def test_window_mask_on_tensors_equals_numpy() -> None:
    rng = np.random.default_rng(13)
    m = 300
    ranks_t = np.stack([rng.permutation(m) for _ in range(4)], axis=1)
    offsets = rng.integers(0, m, size=(6, 4))
    got = window_mask(torch.from_numpy(ranks_t).short(), torch.from_numpy(offsets).short(), 120)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    want = ((ranks_t[None, :, :] - offsets[:, None, :]) % m < 120).astype(np.float32)
    assert np.array_equal(got.numpy(), want)
