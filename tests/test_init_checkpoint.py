"""model.init_checkpoint: training starts from a torchvision ResNet state dict or a mak-ray model file."""

from __future__ import annotations

import io

import pytest
import torch
from torchvision.models import resnet18

from mak_ray import storage
from mak_ray.config import ConfigError, ModelSection, load_config
from mak_ray.models import build_model, load_init_weights, model_state_bytes
from mak_ray.pipeline import preflight


def _save(obj, path) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(str(path), buf.getvalue())
    return str(path)


def test_a_torchvision_state_dict_sets_the_backbone(tmp_path):
    torch.manual_seed(0)
    tv = resnet18(num_classes=7)  # its own fc: dropped
    uri = _save(tv.state_dict(), tmp_path / "resnet18.pt")
    model = build_model(ModelSection(arch="resnet18", width=64, small_stem=False, proj_dim=16))
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert load_init_weights(model, uri).startswith("the backbone")
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, tv.state_dict()[k]), k
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k
    # wrapped and DDP-prefixed forms load the same way
    wrapped = _save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "w.pt")
    other = build_model(ModelSection(arch="resnet18", width=64, small_stem=False, proj_dim=16))
    load_init_weights(other, wrapped)
    assert torch.equal(other.backbone.conv1.weight, tv.conv1.weight)


def test_a_mak_ray_model_file_sets_the_whole_model(tmp_path):
    cfg = ModelSection(width=8, proj_dim=16)
    torch.manual_seed(1)
    src = build_model(cfg)
    uri = str(tmp_path / "model.pt")
    storage.write_bytes(uri, model_state_bytes(src, cfg))
    dst = build_model(cfg)
    assert load_init_weights(dst, uri) == "the whole model"
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_a_checkpoint_that_does_not_fit_names_what_to_change(tmp_path):
    uri = _save(resnet18().state_dict(), tmp_path / "resnet18.pt")
    small = build_model(ModelSection(arch="resnet18", width=8, small_stem=True))
    with pytest.raises(ValueError, match="other shape: .*model.width and model.small_stem"):
        load_init_weights(small, uri)
    with pytest.raises(ValueError, match="no state dict"):
        load_init_weights(small, _save({"epoch": 3}, tmp_path / "junk.pt"))


def test_a_missing_checkpoint_is_refused_before_work(tmp_path):
    (tmp_path / "t").mkdir()
    cfg = load_config(
        None,
        [
            f"data.target={tmp_path / 't'}",
            f"run.output_uri={tmp_path / 'run'}",
            f"model.init_checkpoint={tmp_path / 'no.pt'}",
        ],
    )
    with pytest.raises(ConfigError, match="model.init_checkpoint"):
        preflight(cfg, ("pretrain",))
