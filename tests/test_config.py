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
        ("score.num_actors=-1", "score.num_actors", ">= 0"),
    ],
)
def test_bad_values_name_their_field(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.field == field
    assert field in str(err.value) and words in str(err.value)


def test_actor_pool_bounds():
    """min_actors may not exceed an explicit num_actors; with num_actors=0 (sized from the cluster) it may
    be anything, and the pool is never smaller than it."""
    from mak_ray.score.actors import pool_size

    with pytest.raises(ConfigError, match="must not exceed score.num_actors"):
        load_config(None, ["score.num_actors=2", "score.min_actors=3"])
    sc = load_config(None, ["score.min_actors=3"]).score
    assert sc.num_actors == 0
    assert pool_size(sc, {"CPU": 8.0}) == 8
    assert pool_size(sc, {"CPU": 2.0}) == 3  # never below min_actors
    gpu = load_config(None, ["score.gpus_per_actor=0.5"]).score
    assert pool_size(gpu, {"CPU": 64.0, "GPU": 4.0}) == 8
    assert pool_size(gpu, {"CPU": 64.0}) == 1  # no GPU yet (autoscaling from zero): one actor asks for one
    assert pool_size(load_config(None, ["score.num_actors=5"]).score, {"CPU": 64.0}) == 5
    assert pool_size(load_config(None, []).score, {"CPU": 16.0}, shards=3) == 3  # no idle actors


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
