"""A grown pool scores only what is new; a shrunk one drops what left; the bank is kept per model; other
params score afresh. And the bank keeps drawing until it holds bank_size usable images."""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from mak_ray import storage
from mak_ray.config import ModelSection, config_from_dict
from mak_ray.layout import ShardedOutput
from mak_ray.models import build_model, save_model
from mak_ray.score import embed_images, score_pool
from tests.samples import good_image_bytes, tar_of_images


def cfg_for(pool: str, run: str, **score):
    s = {
        "views": 3,
        "bank_size": 16,
        "ecle_batch_size": 8,
        "ecle_repeats": 2,
        "batch_size": 16,
        "log_every_s": 60.0,
    }
    s.update(score)
    return config_from_dict(
        {
            "run": {"output_uri": run, "seed": 3},
            "data": {"pool": pool, "image_size": 16, "files_per_shard": 8},
            "score": s,
        }
    )


def score(cfg, model_uri, centroids) -> dict:
    out = ShardedOutput(storage.join(cfg.run.output_uri, "score"))
    return score_pool(cfg, model_uri, centroids, out, out.file("bank.npy"), targets=centroids)


def table(run: str) -> pa.Table:
    """Every column of the score output (id, ecle, proximity, nn_distance, embedding, label, error, shard,
    object_version), one row per id."""
    return storage.read_parquet(storage.join(run, "score")).sort_by("id")


def _write(root: str, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in names:
        storage.write_bytes(storage.join(root, n), good_image_bytes(rng))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_grown_pool_scores_only_its_new_shards(
    ray_session, model_uri, centroids, tmp_path, request, where, monkeypatch
):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    pool = storage.join(root, "pool")
    base = [f"c{c}/img{i:03d}.png" for c in range(3) for i in range(0, 80, 2)]  # 120 images
    _write(pool, base, 0)
    run = storage.join(root, "run")
    cfg = cfg_for(pool, run)
    first = score(cfg, model_uri, centroids)
    assert first["inputs"] == 120 and first["shards_added"] == first["shards"]
    before = table(run).drop_columns(["shard"])
    bank = storage.read_bytes(storage.join(run, "score", "bank.npy"))

    # 10 % more: a new sub-folder and names spread among the existing ones
    added = [f"new/img{i:03d}.png" for i in range(6)] + [f"c{i % 3}/img{2 * i + 1:03d}.png" for i in range(6)]
    _write(pool, added, 1)
    from mak_ray.data.manifest import plan_for
    from mak_ray.score import engine
    from mak_ray.score.engine import shard_delta

    delta = shard_delta(plan_for(cfg, pool), ShardedOutput(storage.join(run, "score")))  # what status shows
    reads: list[list[pa.Table]] = []  # the read blocks of each run (one read/score task each)
    read_blocks = engine.read_blocks

    def spy(units: pa.Table, block_rows: int | None = None) -> list[pa.Table]:
        reads.append(read_blocks(units, block_rows))
        return reads[-1]

    monkeypatch.setattr(engine, "read_blocks", spy)
    grown = score(cfg, model_uri, centroids)
    assert {k: delta[k] for k in ("done", "to_add", "to_remove")} == {
        "done": grown["shards_reused"],
        "to_add": grown["shards_added"],
        "to_remove": grown["shards_removed"],
    }
    assert grown["inputs"] == 132 and grown["shards_removed"] >= 1
    assert grown["shards_reused"] + grown["shards_added"] == grown["shards"]
    assert grown["shards_reused"] >= first["shards"] - 6 - 2  # at most the shards a new file fell into
    # only the 12 new objects were read and scored; the other rows of the changed shards were carried over
    assert grown["rows_this_run"] == 12 and grown["rows_carried"] > 0
    assert grown["rows_reused"] == 120 and delta["rows_to_remove"] >= grown["rows_carried"]
    # the residual shards (a few new rows each) share read/score tasks, up to files_per_shard rows per task
    (blocks,) = reads
    shards_read = sum(b.num_rows for b in blocks)
    assert shards_read > 2 and len(blocks) <= 2 < shards_read, [b["rows"].to_pylist() for b in blocks]
    assert all(sum(b["rows"].to_pylist()) <= 8 for b in blocks)
    assert storage.read_bytes(storage.join(run, "score", "bank.npy")) == bank  # the bank is kept
    kept = table(run).drop_columns(["shard"])
    assert kept.filter(pc.is_in(kept["id"], before["id"])).equals(before)  # old rows carried bit for bit

    # a modified file (same name, new content and size) is read and scored again
    storage.write_bytes(storage.join(pool, base[5]), good_image_bytes(np.random.default_rng(42), size=20))
    modified = score(cfg, model_uri, centroids)
    assert modified["rows_this_run"] == 1
    assert modified["inputs"] == 132 and modified["shards_added"] == 1 and modified["rows_carried"] >= 1

    # the same rows as a fresh run over the grown pool with the same (frozen) bank
    fresh_run = storage.join(root, "fresh")
    for name in ("bank.npy", "bank.json"):
        storage.write_bytes(
            storage.join(fresh_run, "score", name), storage.read_bytes(storage.join(run, "score", name))
        )
    fresh = score(cfg_for(pool, fresh_run), model_uri, centroids)
    assert fresh["rows_this_run"] == 132 and fresh["shards_reused"] == 0 and fresh["rows_reused"] == 0
    a, b = table(run), table(fresh_run)
    assert a.column_names == b.column_names and "nn_distance" in a.column_names
    for name in ("id", "shard", "label", "error", "object_version"):
        assert a[name].equals(b[name]), name
    # The rows scored in this run came through the model in blocks of their own (the changed shards' new
    # objects), the fresh run's in blocks of other sizes; CPU kernels for batches of 1-3 rows round
    # differently.
    for name in ("ecle", "proximity", "nn_distance"):
        x, y = a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=name)
    emb = [np.stack(t["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32) for t in (a, b)]
    np.testing.assert_allclose(emb[0], emb[1], rtol=2e-3, atol=1e-5)

    # removed images: their rows disappear
    gone = [base[0], base[57], added[0]]
    for g in gone:
        storage.delete(storage.join(pool, g))
    shrunk = score(cfg, model_uri, centroids)
    assert shrunk["inputs"] == 129 and shrunk["shards_removed"] >= 1 and shrunk["rows_this_run"] == 0
    ids = set(table(run).column("id").to_pylist())
    assert not {i for i in ids if any(i.endswith(g) for g in gone)}
    assert len(ids) == 129
    after = table(run).drop_columns(["shard"])
    assert after.equals(a.drop_columns(["shard"]).filter(pc.is_in(a["id"], after["id"])))  # as they were


def test_the_bank_is_kept_per_model_and_other_params_score_afresh(
    ray_session, model_uri, centroids, tmp_path, caplog
):
    pool = str(tmp_path / "pool")
    _write(pool, [f"a/{i:03d}.png" for i in range(40)], 2)
    run = str(tmp_path / "run")
    cfg = cfg_for(pool, run)
    score(cfg, model_uri, centroids)
    bank_path = storage.join(run, "score", "bank.npy")
    bank = np.load(bank_path)
    again = score(cfg, model_uri, centroids)
    assert again["rows_this_run"] == 0 and again["shards_reused"] == again["shards"]

    redraw = score(cfg_for(pool, run, redraw_bank=True), model_uri, centroids)
    assert np.array_equal(np.load(bank_path), bank)  # drawn again: the same seed and pool give the same bank
    assert redraw["rows_this_run"] == 0  # so every row stays

    caplog.set_level(logging.WARNING, logger="mak_ray.score.engine")
    views = score(cfg_for(pool, run, views=4), model_uri, centroids)  # a scoring setting: everything again
    assert views["shards_reused"] == 0 and views["rows_this_run"] == 40
    assert "scoring.views" in caplog.text
    assert np.load(bank_path).shape[0] == 4  # the bank depends on the views: drawn again


def test_a_changed_model_redraws_the_bank(ray_session, tmp_path, model_uri):
    from mak_ray.data.manifest import plan_for
    from mak_ray.score.bank import load_or_compute_bank

    pool = str(tmp_path / "pool")
    _write(pool, [f"a/{i:03d}.png" for i in range(20)], 9)
    cfg = cfg_for(pool, str(tmp_path / "run"))
    plan = plan_for(cfg, pool)
    bank, info = str(tmp_path / "bank.npy"), str(tmp_path / "bank.json")
    first = load_or_compute_bank(cfg, model_uri, plan, bank, info)
    assert np.array_equal(load_or_compute_bank(cfg, model_uri, plan, bank, info), first)  # kept
    other = str(tmp_path / "other.pt")
    torch.manual_seed(1)
    mcfg = ModelSection(arch="resnet18", width=8, small_stem=True, proj_dim=16)
    save_model(build_model(mcfg), mcfg, other)
    before = storage.read_json(info)
    second = load_or_compute_bank(cfg, other, plan, bank, info)
    assert storage.read_json(info)["model"] != before["model"] and not np.array_equal(second, first)


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
def test_tar_and_parquet_pools_grow_by_their_files(ray_session, model_uri, tmp_path, fmt):
    """Embed mode (the same engine, half the actor work): one file added is one shard scored; one removed
    is one shard dropped."""
    rng = np.random.default_rng(6)
    pool = tmp_path / "pool"
    pool.mkdir()

    def add(k: int) -> None:
        if fmt == "tar":
            (pool / f"t{k}.tar").write_bytes(tar_of_images(rng, [f"k{k}-{i}" for i in range(5)]))
        else:
            ids = [f"p{k}-{i}" for i in range(5)]
            pq.write_table(
                pa.table({"id": ids, "image": [good_image_bytes(rng) for _ in ids]}), pool / f"p{k}.parquet"
            )

    for k in range(4):
        add(k)
    cfg = cfg_for(str(pool), str(tmp_path / "run"))
    out = ShardedOutput(str(tmp_path / "run" / "emb"))
    first = embed_images(str(pool), cfg, model_uri, out)
    assert (first["inputs"], first["shards"]) == (20, 4)
    add(9)
    grown = embed_images(str(pool), cfg, model_uri, out)
    assert (grown["inputs"], grown["shards_added"], grown["shards_reused"]) == (25, 1, 4)
    os.remove(next(pool.iterdir()) if fmt == "tar" else pool / "p0.parquet")
    shrunk = embed_images(str(pool), cfg, model_uri, out)
    assert (shrunk["inputs"], shrunk["shards_removed"], shrunk["rows_this_run"]) == (20, 1, 0)


def test_the_bank_draws_until_it_holds_bank_size_usable_images(ray_session, model_uri, tmp_path):
    """A pool of 1,000 objects of which 2 % decode: the bank still holds bank_size images."""
    from mak_ray.data.manifest import plan_for
    from mak_ray.score.bank import compute_bank

    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(7)
    good = set(rng.choice(1000, size=20, replace=False).tolist())
    for i in range(1000):
        (pool / f"{i:04d}.png").write_bytes(good_image_bytes(rng) if i in good else b"")
    cfg = cfg_for(str(pool), str(tmp_path / "run"), bank_size=12)
    bank, info = compute_bank(cfg, model_uri, plan_for(cfg, str(pool)))
    assert bank.shape == (3, 12, 16) and info["usable"] >= 12 and info["drawn"] > 30
    # all of it drawn when asked for more than the pool holds
    cfg = cfg_for(str(pool), str(tmp_path / "run"), bank_size=64)
    bank, info = compute_bank(cfg, model_uri, plan_for(cfg, str(pool)))
    assert bank.shape[1] == 20 and info["drawn"] == 1000


def test_the_bank_draws_more_shards_of_a_parquet_pool(ray_session, model_uri, tmp_path, monkeypatch):
    from mak_ray.data.manifest import plan_for
    from mak_ray.score import bank as bank_mod

    monkeypatch.setattr(bank_mod, "BANK_SHARDS", 2)
    rng = np.random.default_rng(8)
    (tmp_path / "pool").mkdir()
    for k in range(6):  # one usable row per file
        ids = [f"p{k}-{i}" for i in range(4)]
        images = [good_image_bytes(rng)] + [b"junk"] * 3
        pq.write_table(pa.table({"id": ids, "image": images}), tmp_path / "pool" / f"p{k}.parquet")
    cfg = cfg_for(str(tmp_path / "pool"), str(tmp_path / "run"), bank_size=5)
    bank, info = bank_mod.compute_bank(cfg, model_uri, plan_for(cfg, str(tmp_path / "pool")))
    assert bank.shape[1] == 5 and info["drawn_shards"] == 6
