"""The select stage streams the score output and must pick exactly what the in-memory selectors pick."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mak_ray import storage
from mak_ray.config import load_config
from mak_ray.select import ScoreStats, select
from mak_ray.selection_stage import run_selection


def _emb_array(emb: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), emb.shape[1])


@pytest.fixture
def fake_run(tmp_path):
    rng = np.random.default_rng(3)
    n, d = 600, 16
    ids = [f"pool-{i:04d}" for i in range(n)]
    ecle = rng.normal(5, 1, n).astype(np.float32)
    prox = rng.uniform(0, 1, n).astype(np.float32)
    emb = rng.normal(size=(n, d)).astype(np.float16)
    error = [None] * n
    for bad in (7, 300, 599):
        error[bad] = "corrupt"
    run = str(tmp_path / "run")
    for s, rows in enumerate(np.array_split(np.arange(n), 3)):  # three shards, as the scorer writes them
        table = pa.table(
            {
                "id": pa.array([ids[i] for i in rows], pa.string()),
                "ecle": pa.array(ecle[rows]),
                "proximity": pa.array(prox[rows]),
                "embedding": _emb_array(emb[rows]),
                "label": pa.array(["c"] * len(rows), pa.string()),
                "error": pa.array([error[i] for i in rows], pa.string()),
                "shard": pa.array([f"s{s}"] * len(rows)),
            }
        )
        storage.write_parquet(table, storage.join(run, "score", f"shard=s{s}", "part-0.parquet"))
    target = rng.normal(size=(50, d)).astype(np.float16)
    storage.write_parquet(
        pa.table(
            {
                "id": [f"t{i}" for i in range(50)],
                "embedding": _emb_array(target),
                "label": ["c"] * 50,
                "error": pa.array([None] * 50, pa.string()),
            }
        ),
        storage.join(run, "embed", "target", "part-0.parquet"),
    )
    ok = np.array([e is None for e in error])
    cfg = load_config(None, [f"run.output_uri={run}", "select.budget=40"])
    return cfg, np.array(ids)[ok], ecle[ok], prox[ok], emb[ok].astype(np.float32), target.astype(np.float32)


@pytest.mark.parametrize("method", ["mak", "kcenter", "tailness", "proximity"])
def test_streamed_selection_equals_in_memory(fake_run, method):
    cfg, ids, ecle, prox, emb, target = fake_run
    out = storage.join(cfg.run.output_uri, "select", method)
    summary = run_selection(cfg, method, out)
    got = storage.read_text(storage.join(out, "selection.txt")).split()
    stats = ScoreStats.empty().update(ecle, prox)
    want = select(
        method,
        k=40,
        ids=ids,
        ecle=ecle,
        proximity=prox,
        embeddings=emb,
        target_embeddings=target,
        stats=stats,
        loss_weight=0.5,
        core_ratio=1.5,
    )
    assert got == [str(i) for i in want.ids]
    assert summary["usable_pool"] == 597
    table = storage.read_parquet(storage.join(out, "selection.parquet"))
    assert table.column("id").to_pylist() == got and table.column("order").to_pylist() == list(range(40))


def test_random_is_seeded_and_usable_only(fake_run):
    cfg, ids, *_ = fake_run
    a = (
        run_selection(cfg, "random", storage.join(cfg.run.output_uri, "a"))
        and storage.read_text(storage.join(cfg.run.output_uri, "a", "selection.txt")).split()
    )
    b = (
        run_selection(cfg, "random", storage.join(cfg.run.output_uri, "b"))
        and storage.read_text(storage.join(cfg.run.output_uri, "b", "selection.txt")).split()
    )
    assert a == b and len(set(a)) == 40 and set(a) <= set(ids.tolist())


def test_two_stage_option(fake_run, ray_session):
    cfg, ids, *_ = fake_run
    cfg.select.kcenter_shards = 3
    out = storage.join(cfg.run.output_uri, "select", "mak2")
    summary = run_selection(cfg, "mak", out)
    got = storage.read_text(storage.join(out, "selection.txt")).split()
    assert len(set(got)) == 40 and set(got) <= set(ids.tolist())
    assert "two_stage" in summary


def test_budget_larger_than_usable_pool_is_refused(fake_run):
    cfg, *_ = fake_run
    cfg.select.budget = 598
    with pytest.raises(ValueError, match="larger than the usable pool"):
        run_selection(cfg, "mak", storage.join(cfg.run.output_uri, "x"))
