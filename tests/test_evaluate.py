"""Evaluation library: linear probe, few-shot subsets, class groups, metrics, result files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from mak_ray import storage
from mak_ray.config import EvalSection
from mak_ray.evaluate import (
    class_groups,
    compute_metrics,
    evaluate_features,
    features_from_table,
    few_shot_subset,
    fit_linear,
    markdown_table,
    predict,
    write_results,
)
from mak_ray.layout import RunLayout

FAST = EvalSection(lr=0.1, epochs=20, weight_decay=1e-4, batch_size=64, few_shot=0.1)


def blobs(n_per_class: int, n_classes: int, dim: int, seed: int, sep: float = 6.0):
    """Well separated Gaussian blobs: class means are ``sep`` apart on distinct axes, plus a shared offset."""
    rng = np.random.default_rng(seed)
    means = np.zeros((n_classes, dim))
    means[np.arange(n_classes), np.arange(n_classes)] = sep
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = means[y] + rng.normal(size=(len(y), dim)) + 50.0  # the offset makes standardisation matter
    return x.astype(np.float32), y


def embedding_table(
    x: np.ndarray, labels: list[str], errors: list[str | None] | None = None, dtype: pa.DataType | None = None
) -> pa.Table:
    flat = pa.array(x.reshape(-1), type=dtype or pa.float16())
    emb = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    n = len(labels)
    return pa.table(
        {
            "id": pa.array([f"img-{i}" for i in range(n)], pa.string()),
            "label": pa.array(labels, pa.string()),
            "embedding": emb,
            "error": pa.array(errors if errors is not None else [None] * n, pa.string()),
        }
    )


# ------------------------------------------------------------------------------------------ linear probe


def test_linear_probe_separable_and_deterministic():
    x, y = blobs(80, 5, 16, seed=0)
    xt, yt = blobs(40, 5, 16, seed=1)
    rng_before = torch.random.get_rng_state()
    m1 = fit_linear(x, y, 5, FAST, seed=3)
    assert torch.equal(rng_before, torch.random.get_rng_state()), "fit must not touch the global RNG"
    acc = float(np.mean(predict(m1, xt) == yt))
    assert acc > 0.95, acc
    m2 = fit_linear(x, y, 5, FAST, seed=3)
    assert torch.equal(m1.weight, m2.weight)
    m3 = fit_linear(x, y, 5, FAST, seed=4)
    assert not torch.equal(m1.weight, m3.weight), "batch order should depend on the seed"


def test_linear_probe_rejects_bad_input():
    x, y = blobs(5, 2, 4, seed=0)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear(x, y + 1, 2, FAST, seed=0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_linear(bad, y, 2, FAST, seed=0)


# ------------------------------------------------------------------------------------------ groups


def test_class_groups_boundaries_default():
    counts = {"a": 500, "b": 101, "c": 100, "d": 50, "e": 20, "f": 19, "g": 0}
    assert class_groups(counts) == {
        "a": "many",
        "b": "many",
        "c": "medium",
        "d": "medium",
        "e": "medium",
        "f": "few",
        "g": "few",
    }


def test_class_groups_configurable_thresholds():
    counts = {"a": 11, "b": 10, "c": 3, "d": 2}
    assert class_groups(counts, many_threshold=10, few_threshold=3) == {
        "a": "many",
        "b": "medium",
        "c": "medium",
        "d": "few",
    }
    with pytest.raises(ValueError):
        class_groups(counts, many_threshold=2, few_threshold=3)


# ------------------------------------------------------------------------------------------ few-shot


def test_few_shot_fraction_balanced_reproducible_and_seeded():
    labels = np.repeat(np.array(["cat", "dog", "eel", "fox"]), 200)
    labels = np.random.default_rng(0).permutation(labels)
    a = few_shot_subset(labels, 0.05, seed=7)
    b = few_shot_subset(labels, 0.05, seed=7)
    c = few_shot_subset(labels, 0.05, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0), "indices are sorted and unique"
    names, counts = np.unique(labels[a], return_counts=True)
    assert names.tolist() == ["cat", "dog", "eel", "fox"] and counts.tolist() == [10] * 4


def test_few_shot_count_and_minimums():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 7)
    idx = few_shot_subset(labels, 5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 5]  # count capped at the class size
    idx = few_shot_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[idx]).tolist() == [1, 1, 1]  # at least one per class
    idx = few_shot_subset(labels, 0.29, seed=0)
    assert np.bincount(labels[idx]).tolist() == [14, 1, 2]  # floor(0.29 * 50) = 14 despite float error
    with pytest.raises(ValueError):
        few_shot_subset(labels, 2.5, seed=0)
    with pytest.raises(ValueError):
        few_shot_subset(labels, 0.0, seed=0)


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_hand_made_case():
    # a: 4 test items, 3 right (0.75); b: 2 items, 1 right (0.5); c: 2 items, 2 right (1.0); d: 2 items, 0 right.
    y_true = np.array(["a", "a", "a", "a", "b", "b", "c", "c", "d", "d"])
    y_pred = np.array(["a", "a", "a", "b", "b", "a", "c", "c", "a", "c"])
    groups = {"a": "many", "b": "many", "c": "medium", "d": "medium", "z": "few"}
    m = compute_metrics(y_true, y_pred, groups)
    assert m["top1"] == pytest.approx(6 / 10)
    assert m["per_class"] == {"a": 0.75, "b": 0.5, "c": 1.0, "d": 0.0}
    assert m["groups"] == {"many": pytest.approx(0.625), "medium": pytest.approx(0.5), "few": None}
    assert m["group_classes"] == {"many": 2, "medium": 2, "few": 0}
    assert m["group_std"] == pytest.approx(0.0625)  # std of [0.625, 0.5]; the empty group is left out
    assert m["class_std"] == pytest.approx(np.std([0.75, 0.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="without a group"):
        compute_metrics(y_true, y_pred, {"a": "many"})


# ------------------------------------------------------------------------------------------ tables + report


def test_features_from_table_drops_errors():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    t = embedding_table(x, ["a", "b", "a", "b"], errors=[None, "decode failed", None, None])
    f = features_from_table(t.slice(0, 4))
    assert f.dropped_errors == 1
    assert f.labels.tolist() == ["a", "a", "b"] and f.ids.tolist() == ["img-0", "img-2", "img-3"]
    np.testing.assert_array_equal(f.x, x[[0, 2, 3]])
    assert f.x.dtype == np.float32
    # a sliced table (non-zero offset) must still line embeddings up with their rows
    f2 = features_from_table(t.slice(2, 2))
    np.testing.assert_array_equal(f2.x, x[[2, 3]])


def synthetic_eval_tables():
    n_classes = 6
    x, y = blobs(60, n_classes, 12, seed=0)
    xt, yt = blobs(30, n_classes, 12, seed=1)
    names = [f"c{i}" for i in range(n_classes)]
    train_errors = [None] * len(y)
    train_errors[5] = "corrupt"
    train = embedding_table(x, [names[i] for i in y], train_errors)
    test = embedding_table(xt, [names[i] for i in yt], dtype=pa.float32())
    target_counts = {"c0": 300, "c1": 101, "c2": 100, "c3": 20, "c4": 19, "c5": 3}
    return train, test, target_counts


def test_evaluate_features_end_to_end():
    train, test, target_counts = synthetic_eval_tables()
    res = evaluate_features(train, test, target_counts, FAST, seed=0)
    json.dumps(res)  # JSON-able
    assert res["n_train"] == 359 and res["n_test"] == 180
    assert res["dropped_errors"] == {"train": 1, "test": 0, "total": 1}
    assert (
        res["n_few_shot"] == 5 * 6 + 5
    )  # floor(0.1 * 60) = 6 per class; the class with the dropped row: 59 -> 5
    assert res["groups"]["assignment"] == {
        "c0": "many",
        "c1": "many",
        "c2": "medium",
        "c3": "medium",
        "c4": "few",
        "c5": "few",
    }
    assert res["full"]["top1"] > 0.95
    assert res["few_shot"]["top1"] > 0.8
    assert res["few_shot"]["n_train"] == res["n_few_shot"]
    for setting in ("full", "few_shot"):
        assert set(res[setting]["groups"]) == {"many", "medium", "few"}
        assert res[setting]["group_classes"] == {"many": 2, "medium": 2, "few": 2}


def test_unseen_and_untargeted_classes_are_reported():
    x, y = blobs(10, 3, 4, seed=0)
    train = embedding_table(x[y < 2], [f"c{i}" for i in y[y < 2]])
    test = embedding_table(x, [f"c{i}" for i in y])  # c2 is absent from train and from the target counts
    res = evaluate_features(train, test, {"c0": 200, "c1": 50}, EvalSection(epochs=3, few_shot=1), seed=0)
    assert res["unseen_test_classes"] == ["c2"]
    assert res["groups"]["missing_from_target"] == ["c2"]
    assert res["groups"]["assignment"] == {"c0": "many", "c1": "medium", "c2": "few"}
    assert res["full"]["per_class"]["c2"] == 0.0 and res["full"]["groups"]["few"] == 0.0


def test_markdown_table_compares_runs():
    m = {
        "top1": 0.5,
        "groups": {"many": 0.6, "medium": 0.5, "few": None},
        "group_std": 0.05,
        "class_std": 0.1,
    }
    md = markdown_table({"mak / full": m, "random | full": {**m, "top1": 0.25}})
    lines = md.strip().splitlines()
    assert lines[0] == "| setting | overall | many | medium | few | group std | class std |"
    assert lines[2] == "| mak / full | 50.00 | 60.00 | 50.00 | – | 5.00 | 10.00 |"
    assert lines[3].startswith("| random \\| full | 25.00 |")


def _write(res: dict, run: str) -> RunLayout:
    layout = RunLayout(run)
    write_results(res, layout.metrics_json("demo"), layout.metrics_md("demo"), "demo")
    return layout


def _check_written(layout: RunLayout, res: dict) -> None:
    back = storage.read_json(layout.metrics_json("demo"))
    assert back["name"] == "demo"
    assert back["full"]["top1"] == pytest.approx(res["full"]["top1"])
    assert back["groups"]["assignment"] == res["groups"]["assignment"]
    md = storage.read_text(layout.metrics_md("demo"))
    assert "| full | " in md and "| few_shot | " in md
    assert f"{100 * res['full']['top1']:.2f}" in md


@pytest.fixture(scope="module")
def small_results():
    train, test, target_counts = synthetic_eval_tables()
    cfg = EvalSection(lr=0.1, epochs=5, batch_size=128, few_shot=2)
    return evaluate_features(train, test, target_counts, cfg, seed=1)


def test_write_results_local(tmp_path, small_results):
    _check_written(_write(small_results, str(tmp_path / "run")), small_results)


def test_write_results_s3(s3_bucket, small_results):
    layout = _write(small_results, f"{s3_bucket}/runs/demo")
    _check_written(layout, small_results)
    assert storage.list_files(layout.evaluation("demo")) == [
        layout.metrics_json("demo"),
        layout.metrics_md("demo"),
    ]
