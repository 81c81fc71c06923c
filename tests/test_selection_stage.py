"""The select stage streams the score output and must pick exactly what the in-memory selector picks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mak_ray import storage
from mak_ray.config import load_config
from mak_ray.layout import RunLayout
from mak_ray.mak import ScoreStats, leave_one_out_nn, nn_distance, quantile_of, quantile_table
from mak_ray.registry import METHODS
from mak_ray.select import select
from mak_ray.select.output import decode_line, read_selection_ids
from mak_ray.stages.select import run


def _emb_array(emb: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), emb.shape[1])


def write_run(run: str, ecle, prox, emb, error, files: int, rng) -> None:
    """A score output in ``files`` part files (as the scorer writes them), a target embedding output and the
    target's reference distances."""
    n, d = emb.shape
    ids = [f"pool-{i:04d}" for i in range(n)]
    layout = RunLayout(run)
    target = rng.normal(size=(50, d)).astype(np.float16)
    nn = _nn(emb, target)
    for s, rows in enumerate(np.array_split(np.arange(n), files)):
        table = pa.table(
            {
                "id": pa.array([ids[i] for i in rows], pa.string()),
                "ecle": pa.array(ecle[rows]),
                "proximity": pa.array(prox[rows]),
                "nn_distance": pa.array(nn[rows]),
                "embedding": _emb_array(emb[rows]),
                "label": pa.array(["c"] * len(rows), pa.string()),
                "error": pa.array([error[i] for i in rows], pa.string()),
                "shard": pa.array([f"s{s}"] * len(rows)),
            }
        )
        storage.write_parquet(table, layout.scores.part(f"s{s:02d}", "part-0.parquet"))
    loo = leave_one_out_nn(target.astype(np.float32))
    storage.write_json(layout.target_reference, {"nn_distance": quantile_table(loo)})
    storage.write_parquet(
        pa.table(
            {
                "id": [f"t{i}" for i in range(50)],
                "embedding": _emb_array(target),
                "label": ["c"] * 50,
                "error": pa.array([None] * 50, pa.string()),
            }
        ),
        layout.target_embeddings.part("t", "part-0.parquet"),
    )


def _nn(emb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The nn_distance column as the scorer writes it (float32)."""
    return nn_distance(emb.astype(np.float32), target.astype(np.float32)).astype(np.float32)


def _gate(cfg) -> float:
    table = storage.read_json(RunLayout(cfg.run.output_uri).target_reference)["nn_distance"]
    return quantile_of(table, cfg.select.gate_quantile)


def _pool(tmp_path, *, ties: bool = False, files: int = 3):
    rng = np.random.default_rng(3)
    n, d = 600, 16
    ecle = rng.normal(5, 1, n).astype(np.float32)
    prox = rng.uniform(0, 1, n).astype(np.float32)
    if ties:  # few distinct values: long runs of equal keys at every cut
        ecle = np.round(ecle).astype(np.float32)
        prox = np.round(prox * 2) / 2
        prox = prox.astype(np.float32)
    emb = rng.normal(size=(n, d)).astype(np.float16)
    error = [None] * n
    for bad in (7, 300, 599):
        error[bad] = "corrupt"
    run = str(tmp_path / "run")
    write_run(run, ecle, prox, emb, error, files, rng)
    ok = np.array([e is None for e in error])
    ids = np.array([f"pool-{i:04d}" for i in range(n)])
    cfg = load_config(None, [f"run.output_uri={run}", "select.budget=40"])
    target = storage.read_parquet(RunLayout(run).target_embeddings.root, columns=["embedding"])
    target = np.stack([np.asarray(x, np.float32) for x in target.column("embedding").to_pylist()])
    return cfg, ids[ok], ecle[ok], prox[ok], emb[ok].astype(np.float32), target


@pytest.fixture
def fake_run(tmp_path):
    return _pool(tmp_path)


def _run(cfg, method: str) -> tuple[dict, list[str]]:
    """The select stage for one method, from scratch."""
    layout = RunLayout(cfg.run.output_uri)
    storage.delete(layout.selection(method).root)
    cfg.select.methods = [method]
    summary = run(cfg, layout)[method]
    return summary, read_selection_ids(layout.selection(method))


@pytest.mark.parametrize("method", METHODS)
def test_streamed_selection_equals_in_memory(fake_run, method, ray_session):
    cfg, ids, ecle, prox, emb, target = fake_run
    summary, got = _run(cfg, method)
    assert got == _want(cfg, method, ids, ecle, prox, emb, target)
    if method == "mak_gated":  # the gate keeps some rows and not all: both sides of the key are exercised
        gated = _nn(emb, target) <= _gate(cfg)
        assert 60 < gated.sum() < len(gated) and summary["gate_nn_distance"] == _gate(cfg)
    assert summary["usable_pool"] == 597 and summary["selected"] == 40
    out = RunLayout(cfg.run.output_uri).selection(method)
    table = storage.read_parquet(out.parquet)
    assert table.column("id").to_pylist() == got and table.column("order").to_pylist() == list(range(40))
    assert [decode_line(x) for x in storage.read_text(out.text).splitlines()] == got


def test_random_is_seeded_and_usable_only(fake_run, ray_session):
    cfg, ids, *_ = fake_run
    _, a = _run(cfg, "random")
    _, b = _run(cfg, "random")
    assert a == b and len(set(a)) == 40 and set(a) <= set(ids.tolist())


def test_two_stage_option(fake_run, ray_session):
    """Two-stage K-center on shard actors: K distinct picks among the candidates, and the radius it reports
    covers every candidate."""
    from mak_ray.select import candidate_count, ranking_key, top_positions

    cfg, ids, ecle, prox, emb, target = fake_run
    cfg.select.kcenter_shards = 3
    summary, got = _run(cfg, "mak")
    key = ranking_key("mak", ecle=ecle, proximity=prox, stats=ScoreStats.empty().update(ecle, prox))
    cand = top_positions(key, candidate_count("mak", 40, 1.5, len(ids)))
    assert len(set(got)) == 40 and set(got) <= set(ids[cand].tolist())
    info = summary["two_stage"]
    assert sum(info["shard_sizes"]) == len(cand) and info["cut_short"] == []
    pos = {v: i for i, v in enumerate(ids.tolist())}
    centers = np.vstack([emb[[pos[g] for g in got]], target])
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    full = float((1 - unit(emb[cand]) @ unit(centers).T).min(1).max())
    assert full <= info["radius_bound"] + 1e-5
    assert summary["radius_first_last"][1] == pytest.approx(info["radius_bound"])


def test_budget_larger_than_usable_pool_is_refused(fake_run, ray_session):
    cfg, *_ = fake_run
    cfg.select.budget = 598
    with pytest.raises(ValueError, match="larger than the usable pool"):
        _run(cfg, "mak")


def _want(cfg, method, ids, ecle, prox, emb, target):
    return [
        str(i)
        for i in select(
            method,
            k=40,
            ids=ids,
            ecle=ecle,
            proximity=prox,
            embeddings=emb,
            target_embeddings=target,
            nn=_nn(emb, target),
            gate=_gate(cfg),
            stats=ScoreStats.empty().update(ecle, prox),
            seed=cfg.run.seed,
        ).ids
    ]


@pytest.mark.parametrize("path", ["histogram", "sample"])
@pytest.mark.parametrize("one_task", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_ties_refinement_and_task_count_change_nothing(
    tmp_path, method, one_task, path, monkeypatch, ray_session
):
    """Keys with long runs of ties, one task or one task per file, and either way of bounding the candidates:
    histogram passes (with a boundary small enough to force refinement and the equal-keys cut), or a bound from
    a sample of the pool that falls inside a run of ties. The picks are still the in-memory selector's."""
    from mak_ray.select import cut
    from mak_ray.stages import select as stage

    cfg, ids, ecle, prox, emb, target = _pool(tmp_path, ties=True, files=6)
    monkeypatch.setattr(cut, "BOUNDARY_ROWS", 3)
    if path == "histogram":
        monkeypatch.setattr(cut, "SAMPLE_ROWS", 0)
    else:
        monkeypatch.setattr(cut, "SAMPLE_ROWS", 300)
        monkeypatch.setattr(cut, "MAX_CANDIDATES", 100.0)  # take the bound whatever the ties let through
    if one_task:
        monkeypatch.setattr(stage, "file_groups", lambda files, cpus: [(0, files)])
    else:
        monkeypatch.setattr(stage, "file_groups", lambda files, cpus: [(i, [f]) for i, f in enumerate(files)])
    summary, got = _run(cfg, method)
    assert got == _want(cfg, method, ids, ecle, prox, emb, target)
    assert summary["candidate_bound"] == ("all" if method == "kcenter" else path)


@pytest.mark.parametrize("method", METHODS)
def test_a_sampled_bound_from_a_part_of_the_pool_and_its_fallback(tmp_path, method, monkeypatch, ray_session):
    """A sample of about a third of the pool bounds the candidates (at least the candidate count written, and
    not all the pool); a bound that lets through too few rows falls back to histogram passes. Both pick what the
    in-memory selector picks."""
    from mak_ray.select import candidate_count, cut

    cfg, ids, ecle, prox, emb, target = _pool(tmp_path, files=6)
    want = _want(cfg, method, ids, ecle, prox, emb, target)
    n = candidate_count(method, 40, cfg.select.core_ratio, len(ids))
    monkeypatch.setattr(cut, "SAMPLE_ROWS", 200)
    summary, got = _run(cfg, method)
    assert got == want
    if method != "kcenter":
        assert summary["candidate_bound"] == "sample"
        # about 20 sampled rows in the top n: the bound's margin of SAMPLE_SIGMAS deviations is about n again
        assert n <= summary["candidates_written"] <= 2.5 * n
    monkeypatch.setattr(cut, "SAMPLE_SIGMAS", -20.0)  # a bound far above the n-th key: too few rows pass it
    summary, got = _run(cfg, method)
    assert got == want
    if method != "kcenter":
        assert summary["candidate_bound"] == "histogram" and summary["candidates_written"] >= n


def test_kcenter_device_is_resolved_against_the_cluster(fake_run, ray_session):
    from mak_ray.config import ConfigError
    from mak_ray.stages.select import kcenter_device

    cfg, *_ = fake_run
    assert kcenter_device(cfg) == "cpu"  # auto, and the test cluster has no GPU
    cfg.select.kcenter_device = "cpu"
    assert kcenter_device(cfg) == "cpu"
    cfg.select.kcenter_device = "cuda"
    with pytest.raises(ConfigError, match="select.kcenter_device.*no GPU"):
        kcenter_device(cfg)
    with pytest.raises(ConfigError, match="select.kcenter_device.*no GPU"):
        _run(cfg, "mak")


def test_kcenter_baseline_over_its_memory_bound_is_refused(fake_run, ray_session):
    from mak_ray.config import ConfigError

    cfg, *_ = fake_run
    cfg.select.kcenter_max_bytes = 1000
    with pytest.raises(ConfigError, match="select.kcenter_shards") as err:
        _run(cfg, "kcenter")
    assert "select.kcenter_max_bytes" in str(err.value)


@pytest.mark.parametrize("method", ["mak", "kcenter"])
def test_the_share_of_far_picks_is_counted_and_warned(fake_run, method, ray_session, caplog):
    """Each selection counts its picks beyond the target's 0.9 nearest-neighbour quantile, carries their
    nn_distance into selection.parquet, and warns when they are more than a third."""
    from mak_ray.stages.select import FAR_PICKS, FAR_QUANTILE

    cfg, ids, ecle, prox, emb, target = fake_run
    summary, got = _run(cfg, method)
    nn = dict(zip(ids.tolist(), _nn(emb, target).tolist()))
    table = storage.read_parquet(RunLayout(cfg.run.output_uri).selection(method).parquet)
    np.testing.assert_allclose(table.column("nn_distance").to_numpy(), [nn[i] for i in got], rtol=1e-6)
    ref = storage.read_json(RunLayout(cfg.run.output_uri).target_reference)["nn_distance"]
    far = quantile_of(ref, FAR_QUANTILE)
    want = float(np.mean(np.array([nn[i] for i in got]) > far))
    assert summary["picks_beyond_target_p90"] == pytest.approx(want)
    assert ("warnings" in summary) == (want > FAR_PICKS)
    if want > FAR_PICKS:
        assert "likely out of distribution" in summary["warnings"][0]


def test_candidates_pass_is_the_same_in_chunks_of_any_size(tmp_path, monkeypatch):
    """The candidates pass computes keys over chunks of consecutive files and gathers embeddings per file:
    chunks smaller than a file, of several files, or of all of them write the same rows, each with its own
    embedding."""
    from mak_ray.score import part_files
    from mak_ray.select import cut, passes

    cfg, ids, ecle, prox, emb, target = _pool(tmp_path, files=6)
    files = part_files(RunLayout(cfg.run.output_uri).scores.root)
    pool = passes.stats_pass(files, 0, ["ecle", "proximity", "id"], 1.0, 0)
    plans = []
    for method, n in (("mak", 60), ("random", 40)):
        spec = passes.KeySpec(method, 0.5, 0, pool.stats.to_dict())
        bound = cut.sampled_bound(spec.keys(pool.sample), 1.0, n)
        plans.append(passes.CandidatePlan(spec, bound, bound, str(tmp_path / f"{method}.parquet"), True))
    written = {}
    for chunk_rows in (1, 150, 1 << 16):
        monkeypatch.setattr(passes, "CHUNK_ROWS", chunk_rows)
        counts = [b.written for b in passes.candidates_pass(files, 0, plans)]
        written[chunk_rows] = [storage.read_parquet(p.out_uri) for p in plans]
        assert counts == [60, 40] == [t.num_rows for t in written[chunk_rows]]
    for tables in written.values():
        assert all(a.equals(b) for a, b in zip(tables, written[1 << 16]))
    by_id = dict(zip(ids.tolist(), emb))
    for t in written[150]:
        got = np.array(t.column("embedding").to_pylist(), np.float32)
        np.testing.assert_array_equal(got, np.stack([by_id[i] for i in t.column("id").to_pylist()]))
