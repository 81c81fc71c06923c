"""Config loading: YAML plus overrides, strict types and ranges, errors that name the field."""

from __future__ import annotations

import pytest

from mak_ray.config import ConfigError, MakConfig, dump_config, load_config


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_match_the_paper():
    cfg = load_config()
    assert isinstance(cfg, MakConfig)
    assert cfg.pretrain.temperature == 0.2 and cfg.pretrain.lr == 0.5 and cfg.pretrain.batch_size == 256
    assert cfg.score.views == 10 and cfg.score.ecle_batch_size == 512 and cfg.score.ecle_repeats == 10
    assert cfg.score.centroids == 10 and cfg.select.loss_weight == 0.5 and cfg.select.core_ratio == 1.5


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "select:\n  budget: 50\nscore:\n  views: 4\n")
    cfg = load_config(p, ["select.budget=70", "pretrain.lr=0.25", "select.methods=[mak, kcenter]"])
    assert cfg.select.budget == 70 and cfg.score.views == 4 and cfg.pretrain.lr == 0.25
    assert cfg.select.methods == ["mak", "kcenter"]


def test_int_is_accepted_for_float():
    assert load_config(None, ["pretrain.lr=1"]).pretrain.lr == 1.0


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ("select.budjet=5", "select.budjet", "unknown key"),
        ("nosuch.x=1", "nosuch", "unknown key"),
        ("select.budget=many", "select.budget", "integer"),
        ("select.budget=0", "select.budget", "> 0"),
        ("select.budget=-3", "select.budget", "> 0"),
        ("select.loss_weight=1.5", "select.loss_weight", "<= 1"),
        ("score.views=1", "score.views", ">= 2"),
        ("pretrain.use_gpu=maybe", "pretrain.use_gpu", "true or false"),
        ("model.arch=vgg", "model.arch", "one of"),
        ("select.methods=[mak, magic]", "select.methods[1]", "unknown method"),
        ("score.min_actors=3", "score.min_actors", "num_actors"),
    ],
)
def test_bad_values_name_their_field(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.field == field
    assert field in str(err.value) and words in str(err.value)


def test_bad_yaml_key_names_field(tmp_path):
    p = write(tmp_path, "score:\n  view: 3\n")
    with pytest.raises(ConfigError, match=r"score\.view"):
        load_config(p)


def test_output_inside_input_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.pool=s3://b/pool", "run.output_uri=s3://b/pool/run1"])
    assert err.value.field == "run.output_uri"
    # a sibling prefix that merely shares the name is fine
    load_config(None, ["data.pool=s3://b/pool", "run.output_uri=s3://b/pool-runs/run1"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["select.budget=12", "run.ray_address=auto"])
    p = write(tmp_path, dump_config(cfg))
    assert load_config(p) == cfg


def test_shipped_configs_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        load_config(f)


def test_local_paths_become_absolute_and_s3_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.output_uri=runs/x", "data.pool=s3://b/pool", "data.target=data/t"])
    assert cfg.run.output_uri == str(tmp_path / "runs" / "x")
    assert cfg.data.target == str(tmp_path / "data" / "t")
    assert cfg.data.pool == "s3://b/pool" and cfg.data.eval_test == ""
