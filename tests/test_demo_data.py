"""Demo data: long-tail profile, seeded tail choice, OOD generator, Fashion-MNIST reader, tiny preset on disk."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mak_ray import storage
from mak_ray.demo import fashion_mnist
from mak_ray.demo.longtail import balanced_subset, build_split, long_tail_counts, tail_classes, tail_order
from mak_ray.demo.make import PRESETS, main, make_demo_data
from mak_ray.demo.ood import OOD_KINDS, make_ood_images
from mak_ray.demo.synthetic import SYNTHETIC_CLASSES

FMNIST = Path(fashion_mnist.DEFAULT_DATA_DIR)


# ------------------------------------------------------------------------------------------- long tail


def test_long_tail_counts_follow_exponential_profile() -> None:
    counts = long_tail_counts(1000, 10, imbalance_ratio=100, seed=3)
    assert sorted(counts) == list(range(10))
    assert max(counts.values()) == 1000 and min(counts.values()) == 10  # ratio exactly 100
    order = tail_order(10, 3)
    for rank, cls in enumerate(order):
        assert counts[cls] == round(1000 * 100 ** (-rank / 9))
    assert [counts[c] for c in order] == sorted(counts.values(), reverse=True)


@pytest.mark.parametrize("n_max,ratio", [(300, 100), (50, 10), (5000, 50)])
def test_imbalance_ratio_holds_up_to_rounding(n_max: int, ratio: float) -> None:
    counts = long_tail_counts(n_max, 10, ratio, seed=0)
    lo = n_max / ratio
    assert max(counts.values()) == n_max
    assert abs(min(counts.values()) - lo) <= 0.5
    assert max(counts.values()) / min(counts.values()) == pytest.approx(ratio, rel=0.5 / lo)


def test_tail_choice_is_seeded() -> None:
    assert long_tail_counts(300, 10, 100, seed=7) == long_tail_counts(300, 10, 100, seed=7)
    orders = {tuple(tail_order(10, s)) for s in range(6)}
    assert len(orders) > 1  # different seeds put different classes in the tail
    counts = long_tail_counts(300, 10, 100, seed=7)
    assert tail_classes(counts) == sorted(tail_order(10, 7)[5:])


def test_build_split_takes_exact_counts_and_partitions() -> None:
    labels = np.repeat(np.arange(4), 30)
    counts = {0: 30, 1: 12, 2: 5, 3: 1}
    target, rest = build_split(labels, counts, seed=1)
    assert np.bincount(labels[target], minlength=4).tolist() == [30, 12, 5, 1]
    assert len(np.intersect1d(target, rest)) == 0 and len(target) + len(rest) == len(labels)
    again, _ = build_split(labels, counts, seed=1)
    other, _ = build_split(labels, counts, seed=2)
    assert np.array_equal(target, again) and not np.array_equal(target, other)
    with pytest.raises(ValueError, match="requested"):
        build_split(labels, {0: 31}, seed=0)
    sub = balanced_subset(labels, 7, seed=0)
    assert np.bincount(labels[sub]).tolist() == [7, 7, 7, 7]


# ------------------------------------------------------------------------------------------- OOD


def test_ood_images_are_seeded_and_shaped() -> None:
    a, la = make_ood_images(30, size=28, seed=5)
    b, lb = make_ood_images(30, size=28, seed=5)
    c, _ = make_ood_images(30, size=28, seed=6)
    assert a.shape == (30, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)
    assert {label: la.count(label) for label in OOD_KINDS} == {k: 10 for k in OOD_KINDS}
    assert all(img.std() > 1 for img in a)  # no blank images
    rgb, _ = make_ood_images(4, size=16, seed=0, channels=3)
    assert rgb.shape == (4, 16, 16, 3)
    # the first images do not depend on how many are made
    few, _ = make_ood_images(5, size=28, seed=5)
    assert np.array_equal(few, a[:5])


# ------------------------------------------------------------------------------------------- Fashion-MNIST


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzipped(tmp_path: Path) -> None:
    imgs = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    labs = np.array([9, 0, 4])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(labs))
    x, y = fashion_mnist.load_split("train", tmp_path)
    assert x.shape == (3, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x, imgs.astype(np.uint8)) and y.tolist() == [9, 0, 4]
    x2, y2 = fashion_mnist.load_split("train", tmp_path, limit=2)
    assert x2.shape == (2, 28, 28) and y2.tolist() == [9, 0]


def test_missing_dataset_names_package_and_option(tmp_path: Path) -> None:
    with pytest.raises(fashion_mnist.FashionMnistMissing) as err:
        fashion_mnist.load_split("test", tmp_path / "nowhere")
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "--data-dir" in msg
    with pytest.raises(fashion_mnist.FashionMnistMissing):
        make_demo_data(str(tmp_path / "out"), "small", data_dir=str(tmp_path))
    assert main(["--out", str(tmp_path / "out2"), "--preset", "small", "--data-dir", str(tmp_path)]) == 2


@pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} absent (Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist_records() -> None:
    for split, stem, n_total in (
        ("train", "train-labels-idx1-ubyte", 60000),
        ("test", "t10k-labels-idx1-ubyte", 10000),
    ):
        x, y = fashion_mnist.load_split(split, limit=50)
        assert x.shape == (50, 28, 28) and x.dtype == np.uint8
        assert y.shape == (50,) and 0 <= y.min() and y.max() <= 9
        assert x.max() > 100  # real images, not zeros
        all_labels = fashion_mnist.read_idx(fashion_mnist.find_idx_file(FMNIST, stem))
        assert np.bincount(all_labels).tolist() == [n_total // 10] * 10  # balanced, 10 classes
    # the first training label of Fashion-MNIST is 9 (ankle boot), the first test label too
    assert fashion_mnist.load_split("train", limit=1)[1].tolist() == [9]
    assert fashion_mnist.CLASS_NAMES[9] == "ankle_boot"


# ------------------------------------------------------------------------------------------- tiny preset


def test_tiny_preset_writes_expected_layout(tmp_path: Path) -> None:
    out = str(tmp_path / "demo")
    p = PRESETS["tiny"]
    manifest = make_demo_data(out, "tiny", seed=0)
    classes = list(SYNTHETIC_CLASSES)
    assert manifest["source"] == "synthetic" and manifest["classes"] == classes

    # target: PNG files in class folders, counts as the long-tail profile says
    expected = {classes[c]: n for c, n in long_tail_counts(p.n_max, 10, p.imbalance_ratio, 0).items()}
    pngs = storage.list_files(storage.join(out, "target"), (".png",))
    found: dict[str, int] = {}
    for uri in pngs:
        found[Path(uri).parent.name] = found.get(Path(uri).parent.name, 0) + 1
    assert found == expected == manifest["counts"]["target"]
    assert 180 <= len(pngs) <= 230 and max(expected.values()) == 50
    img = Image.open(io.BytesIO(storage.read_bytes(pngs[0])))
    assert img.size == (p.image_size, p.image_size) and img.mode == "L"

    # pool: 300 rows with 45 OOD, PNG bytes, ids unique and disjoint from the target
    pool = storage.read_parquet(storage.join(out, "pool"))
    assert pool.column_names == ["id", "image", "label"]
    labels = pool.column("label").to_pylist()
    assert pool.num_rows == 300 and sum(lab.startswith("ood") for lab in labels) == 45
    assert {lab for lab in labels if lab.startswith("ood")} == set(p.ood_kinds)
    ids = pool.column("id").to_pylist()
    target_ids = {Path(u).stem for u in pngs}
    assert len(set(ids)) == 300 and not target_ids & set(ids)
    assert Image.open(io.BytesIO(pool.column("image")[0].as_py())).size == (p.image_size, p.image_size)
    assert len(storage.list_files(storage.join(out, "pool"), (".parquet",))) == 3
    ood_pos = [i for i, lab in enumerate(labels) if lab.startswith("ood")]
    assert ood_pos[0] < 100 and ood_pos[-1] >= 200  # shuffled across shards, not all at the end

    # eval sets: balanced
    for name, per_class in (("eval_train", 20), ("eval_test", 10)):
        t = storage.read_parquet(storage.join(out, name))
        counts = {c: t.column("label").to_pylist().count(c) for c in classes}
        assert counts == dict.fromkeys(classes, per_class) == manifest["counts"][name]

    assert manifest["sizes"] == {
        "target": len(pngs),
        "pool": 300,
        "pool_in_distribution": 255,
        "pool_ood": 45,
        "pool_ood_kinds": {k: labels.count(k) for k in p.ood_kinds},
        "pool_shards": 3,
        "eval_train": 200,
        "eval_test": 100,
    }
    assert manifest["suggested_budget"] == round(0.1 * len(pngs))
    assert len(manifest["tail_classes"]) == 5
    assert all(
        manifest["counts"]["target"][c]
        <= min(manifest["counts"]["target"][h] for h in manifest["head_to_tail"][:5])
        for c in manifest["tail_classes"]
    )
    assert storage.read_json(storage.join(out, "manifest.json")) == manifest


def test_tiny_preset_is_reproducible_and_reused(tmp_path: Path) -> None:
    a = make_demo_data(str(tmp_path / "a"), "tiny", seed=1)
    b = make_demo_data(str(tmp_path / "b"), "tiny", seed=1)
    assert a["counts"] == b["counts"]
    pa_, pb = (storage.read_parquet(str(tmp_path / d / "pool")) for d in ("a", "b"))
    assert pa_.equals(pb)
    c = make_demo_data(str(tmp_path / "c"), "tiny", seed=2)
    assert c["head_to_tail"] != a["head_to_tail"]
    # a rerun into a complete folder reuses it; other settings are refused without overwrite
    marker = tmp_path / "a" / "pool" / "part-00000.parquet"
    before = marker.stat().st_mtime_ns
    assert make_demo_data(str(tmp_path / "a"), "tiny", seed=1) == a
    assert marker.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError):
        make_demo_data(str(tmp_path / "a"), "tiny", seed=3)
    assert make_demo_data(str(tmp_path / "a"), "tiny", seed=3, overwrite=True)["seed"] == 3


def test_tiny_preset_on_s3(s3_bucket: str) -> None:
    out = storage.join(s3_bucket, "demo")
    manifest = make_demo_data(out, "tiny", seed=0)
    assert len(storage.list_files(storage.join(out, "target"), (".png",))) == manifest["sizes"]["target"]
    assert storage.read_parquet(storage.join(out, "pool")).num_rows == 300
