"""Model building, the width/stem options, and the save/load round trip (local and S3)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mak_ray.config import ModelSection
from mak_ray.models import build_model, load_model, read_model_file, save_model


def test_standard_width_matches_torchvision_resnet18() -> None:
    model = build_model(ModelSection(arch="resnet18", small_stem=False, width=64, proj_dim=128))
    ref = torchvision.models.resnet18(weights=None)
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours = {k: v.shape for k, v in model.backbone.state_dict().items()}
    assert ours == ref_shapes
    assert model.feature_dim == 512


@pytest.mark.parametrize("arch,width,feat", [("resnet18", 8, 64), ("resnet34", 8, 64), ("resnet50", 4, 128)])
def test_shapes_small_stem(arch: str, width: int, feat: int) -> None:
    model = build_model(ModelSection(arch=arch, small_stem=True, width=width, proj_dim=16)).eval()
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    x = torch.randn(3, 3, 16, 16)
    assert model.feature_dim == feat
    assert model.embed(x).shape == (3, feat)
    assert model(x).shape == (3, 16)


def test_large_stem_downsamples() -> None:
    model = build_model(ModelSection(arch="resnet18", small_stem=False, width=8))
    assert model.backbone.conv1.stride == (2, 2)
    assert isinstance(model.backbone.maxpool, torch.nn.MaxPool2d)


def _roundtrip(uri: str) -> None:
    cfg = ModelSection(arch="resnet18", small_stem=True, width=8, proj_dim=32)
    model = build_model(cfg)
    with torch.no_grad():  # move BN running stats off their defaults so they must survive the trip
        model.train()(torch.randn(4, 3, 16, 16))
    save_model(model, cfg, uri, extra={"epoch": 3, "loss": 1.5})
    loaded = load_model(uri)
    assert not loaded.training
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.embed(x), loaded.embed(x))
    payload = read_model_file(uri)
    assert payload["extra"] == {"epoch": 3, "loss": 1.5}
    assert payload["model_config"]["width"] == 8


def test_save_load_local(tmp_path) -> None:
    _roundtrip(str(tmp_path / "sub" / "model.pt"))


def test_save_load_ddp_wrapped_has_plain_keys(tmp_path) -> None:
    cfg = ModelSection(width=8, proj_dim=8)
    model = build_model(cfg)

    class Wrapper(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.module = m

    save_model(Wrapper(model), cfg, str(tmp_path / "m.pt"))
    keys = read_model_file(str(tmp_path / "m.pt"))["state_dict"].keys()
    assert not any(k.startswith("module.") for k in keys)
    load_model(str(tmp_path / "m.pt"))


def test_save_load_s3(s3_bucket: str) -> None:
    _roundtrip(f"{s3_bucket}/runs/x/model.pt")


def test_missing_file_is_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(str(tmp_path / "nope.pt"))
