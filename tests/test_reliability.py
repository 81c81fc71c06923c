"""Hostile ids, missing inputs and refused configs: each has a clear outcome before or without damage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mak_ray import storage
from mak_ray.cli import main as cli_main
from mak_ray.config import ConfigError, load_config
from mak_ray.layout import RunLayout
from mak_ray.models import build_model, load_model, save_model
from mak_ray.pipeline import preflight, run_stage
from mak_ray.score import embed_images
from tests.samples import good_image_bytes

EVIL_IDS = [
    "../../escape",
    "/etc/passwd",
    "a/../../b",
    "..",
    "ok-1",
    "name\\with\\backslash",
    "\u00e9t\u00e9 \U0001f600",
]


def _tiny_cfg(tmp_path: Path, **over: str):
    pairs = {"model.width": "8", "data.image_size": "16", "run.output_uri": str(tmp_path / "out" / "run")}
    pairs.update(over)
    return load_config(None, [f"{k}={v}" for k, v in pairs.items()])


def test_hostile_ids_cannot_escape_the_output(tmp_path, ray_session):
    """Ids such as '../x' or absolute paths are data, never paths: every file lands under the output URI."""
    rng = np.random.default_rng(0)
    pool = tmp_path / "in" / "pool.parquet"
    storage.write_parquet(
        pa.table(
            {
                "id": EVIL_IDS,
                "image": [good_image_bytes(rng) for _ in EVIL_IDS],
                "label": ["x"] * len(EVIL_IDS),
            }
        ),
        str(pool),
    )
    cfg = _tiny_cfg(tmp_path)
    model = str(tmp_path / "model.pt")
    save_model(build_model(cfg.model), cfg.model, model)
    out = RunLayout(cfg.run.output_uri).eval_embeddings("x", "train")
    summary = embed_images(str(pool.parent), cfg, model, out)
    assert summary["inputs"] == summary["scored"] == len(EVIL_IDS)
    table = storage.read_parquet(out.root, columns=["id", "error"])
    assert sorted(table.column("id").to_pylist()) == sorted(EVIL_IDS)
    root = tmp_path.resolve()
    written = [p for p in root.rglob("*") if p.is_file()]
    outside = [
        p
        for p in written
        if not (str(p).startswith(str(root / "out" / "run")) or p == pool or p.name == "model.pt")
    ]
    assert outside == []
    assert not Path("/etc/passwd.parquet").exists()


def test_stage_without_its_checkpoint_is_refused_before_work(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.png").write_bytes(good_image_bytes(np.random.default_rng(0)))
    cfg = _tiny_cfg(tmp_path, **{"data.pool": str(tmp_path / "pool"), "select.budget": "1"})
    with pytest.raises(FileNotFoundError, match="needs the outputs of stage 'pretrain'"):
        preflight(cfg, ("score",))
    code = cli_main(
        ["score", f"run.output_uri={cfg.run.output_uri}", f"data.pool={tmp_path / 'pool'}", "select.budget=1"]
    )
    assert code == 3


def test_missing_checkpoint_file_has_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model"):
        load_model(str(tmp_path / "nope" / "model.pt"))


def test_budget_over_pool_size_is_refused_before_work(tmp_path):
    rng = np.random.default_rng(1)
    pool = tmp_path / "pool"
    storage.write_parquet(
        pa.table({"id": ["a", "b", "c"], "image": [good_image_bytes(rng) for _ in range(3)]}),
        str(pool / "p.parquet"),
    )
    cfg = _tiny_cfg(tmp_path, **{"data.pool": str(pool), "data.target": str(pool), "select.budget": "4"})
    with pytest.raises(ConfigError) as err:
        preflight(cfg, ("score", "select"))
    assert err.value.field == "select.budget" and "larger than the pool (3 images)" in str(err.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("select.budget=0", "select.budget"),
        ("select.budget=-1", "select.budget"),
        ("score.vews=3", "score.vews"),
        ("select.budget=ten", "select.budget"),
    ],
)
def test_cli_refuses_bad_configs_with_the_field_name(override, field, capsys):
    assert cli_main(["select", override]) == 2
    assert field in capsys.readouterr().err


def test_output_inside_input_refused_by_cli(tmp_path, capsys):
    code = cli_main(["pipeline", f"data.pool={tmp_path}/pool", f"run.output_uri={tmp_path}/pool/run"])
    assert code == 2 and "run.output_uri" in capsys.readouterr().err


def test_empty_pool_refused_before_work(tmp_path, capsys):
    (tmp_path / "pool").mkdir()
    code = cli_main(["select", f"data.pool={tmp_path / 'pool'}", f"run.output_uri={tmp_path}/run"])
    assert code == 2 and "data.pool" in capsys.readouterr().err


def test_missing_input_refused_before_work(tmp_path, capsys):
    code = cli_main(["pretrain", f"data.target={tmp_path}/nothing", f"run.output_uri={tmp_path}/run"])
    assert code == 2 and "data.target" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "pretrain")


def test_report_stage_runs_alone_on_an_empty_run(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    assert run_stage("report", cfg) == RunLayout(cfg.run.output_uri).report_dir
    path = RunLayout(cfg.run.output_uri).report_file("index.html")
    assert storage.read_text(path).lower().lstrip().startswith("<!doctype html")


def test_dry_run_refuses_what_a_run_refuses_and_writes_nothing(tmp_path, capsys):
    """``--dry-run`` checks the config and the inputs the same way a run does, and writes nothing."""
    out = tmp_path / "run"
    assert cli_main(["pipeline", "--dry-run", "select.budget=0", f"run.output_uri={out}"]) == 2
    assert "select.budget" in capsys.readouterr().err
    code = cli_main(["pipeline", "--dry-run", f"data.target={tmp_path}/nothing", f"run.output_uri={out}"])
    assert code == 2 and "data.target" in capsys.readouterr().err
    rng = np.random.default_rng(2)
    pool = tmp_path / "pool"
    storage.write_parquet(
        pa.table({"id": ["a", "b", "c"], "image": [good_image_bytes(rng) for _ in range(3)]}),
        str(pool / "p.parquet"),
    )
    sets = [f"data.{n}={pool}" for n in ("target", "pool", "eval_train", "eval_test")]
    code = cli_main(["pipeline", "--dry-run", *sets, "select.budget=4", f"run.output_uri={out}"])
    assert code == 2 and "larger than the pool (3 images)" in capsys.readouterr().err
    assert cli_main(["score", "--dry-run", *sets, "select.budget=2", f"run.output_uri={out}"]) == 3
    assert "needs the outputs of stage 'pretrain'" in capsys.readouterr().err
    assert cli_main(["pipeline", "--dry-run", *sets, "select.budget=2", f"run.output_uri={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"data.pool: 3 images in 1 shard (parquet) at {pool}" in printed
    assert "pretrain" in printed and "0 done, 1 to add, 0 to remove" in printed
    assert not out.exists()


def test_status_of_a_run_not_started_says_to_do(tmp_path, capsys):
    assert cli_main(["status", f"run.output_uri={tmp_path}/run"]) == 1
    out = capsys.readouterr().out
    assert "pretrain" in out and "to do" in out
    assert not (tmp_path / "run").exists()
