"""The demo pool's OOD kinds: which kinds fill the OOD share, in what proportion, and that the pool holds
exactly the kinds its preset names."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

from mak_ray import storage  # noqa: E402
from mak_ray.demo import make  # noqa: E402
from mak_ray.demo.make import PRESETS, make_demo_data  # noqa: E402
from mak_ray.demo.ood import ALL_OOD_KINDS, OOD_KINDS, kind_schedule, make_ood_images  # noqa: E402
from mak_ray.demo.real_ood import REAL_OOD_KINDS  # noqa: E402


def _pool_ood_counts(out: str) -> Counter:
    labels = storage.read_parquet(storage.join(out, "pool"), columns=["label"]).column("label").to_pylist()
    return Counter(lab for lab in labels if lab.startswith("ood"))


def test_schedule_is_proportional_in_every_prefix_and_independent_of_n() -> None:
    kinds, weights = ("a", "b", "c", "d"), (3, 3, 1, 2)
    total = sum(weights)
    full = kind_schedule(500, kinds, weights)
    for n in range(1, 501):
        prefix = Counter(full[:n])
        for k, w in zip(kinds, weights):
            assert abs(prefix[k] - n * w / total) < 1.0 + 1e-9, (n, k)
    assert kind_schedule(37, kinds, weights) == full[:37]  # image i's kind does not depend on n
    assert kind_schedule(7, kinds) == ["a", "b", "c", "d", "a", "b", "c"]  # even weights: round-robin


def test_schedule_refuses_bad_weights() -> None:
    with pytest.raises(ValueError, match="weights"):
        kind_schedule(3, ("a", "b"), (1,))
    with pytest.raises(ValueError, match="positive integers"):
        kind_schedule(3, ("a", "b"), (1, 0))
    with pytest.raises(ValueError, match="positive integers"):
        kind_schedule(3, ("a", "b"), (1, 1.5))


def test_weighted_images_follow_the_schedule_and_stay_seeded() -> None:
    kinds, weights = ("ood-digits", "ood-noise"), (3, 1)
    a, la = make_ood_images(16, size=28, seed=2, kinds=kinds, weights=weights)
    b, lb = make_ood_images(16, size=28, seed=2, kinds=kinds, weights=weights)
    assert la == lb == kind_schedule(16, kinds, weights) and (a == b).all()
    assert Counter(la) == {"ood-digits": 12, "ood-noise": 4}
    # the digits are bright on black (real kind), the noise fills the frame (generated kind)
    digit_border = [a[i, :2].mean() for i, k in enumerate(la) if k == "ood-digits"]
    noise_border = [a[i, :2].mean() for i, k in enumerate(la) if k == "ood-noise"]
    assert max(digit_border) < 40 < min(noise_border)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_fills_its_ood_share_mostly_with_real_kinds(name: str) -> None:
    p = PRESETS[name]
    assert set(p.ood_kinds) <= set(ALL_OOD_KINDS) and len(p.ood_weights) == len(p.ood_kinds)
    real = sum(w for k, w in zip(p.ood_kinds, p.ood_weights) if k in REAL_OOD_KINDS)
    generated = sum(w for k, w in zip(p.ood_kinds, p.ood_weights) if k in OOD_KINDS)
    if name == "nearood":  # the fidelity bench's pool: real near-OOD only
        assert generated == 0 < real
    else:
        assert real > 2 * generated > 0, "mostly real near-OOD, the generated kinds a further part"
    assert set(REAL_OOD_KINDS) <= set(p.ood_kinds)


def test_preset_pool_sizes_and_ood_fractions_are_kept() -> None:
    sizes = {n: (p.pool_size, p.ood_fraction) for n, p in PRESETS.items()}
    assert sizes == {
        "tiny": (300, 0.15),
        "small": (4600, 0.13),
        "nearood": (9000, 1 / 3),
        "medium": (20000, 0.15),
        "full": (None, 0.15),
    }


def test_tiny_pool_holds_exactly_its_kinds(tmp_path: Path) -> None:
    p = PRESETS["tiny"]
    out = str(tmp_path / "demo")
    manifest = make_demo_data(out, "tiny", seed=0)
    found = _pool_ood_counts(out)
    assert set(found) == set(p.ood_kinds)  # every kind named, and only those
    assert all(k.startswith("ood-") for k in found)
    assert found == Counter(kind_schedule(45, p.ood_kinds, p.ood_weights))
    assert manifest["sizes"]["pool_ood_kinds"] == dict(found)
    assert sum(found.values()) == manifest["sizes"]["pool_ood"] == 45
    real = sum(n for k, n in found.items() if k in REAL_OOD_KINDS)
    assert real / 45 > 0.7
    assert manifest["settings"]["ood_kinds"] == list(p.ood_kinds)


def test_a_preset_with_other_kinds_holds_only_those(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = replace(PRESETS["tiny"], ood_kinds=("ood-faces", "ood-shapes"), ood_weights=(2, 1))
    monkeypatch.setitem(make.PRESETS, "tiny", p)
    out = str(tmp_path / "demo")
    manifest = make_demo_data(out, "tiny", seed=4)
    found = _pool_ood_counts(out)
    assert found == {"ood-faces": 30, "ood-shapes": 15}
    assert manifest["sizes"]["pool_ood_kinds"] == {"ood-faces": 30, "ood-shapes": 15}
    assert manifest["counts"]["pool"]["ood-faces"] == 30
    # a rerun with the same settings reuses the folder (the kinds survive the manifest's JSON round trip)
    assert make_demo_data(out, "tiny", seed=4) == manifest
