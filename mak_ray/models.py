"""SimCLR model: a torchvision ResNet backbone plus a 2-layer projection head, and its one file format.

Scoring, evaluation and retraining all go through :func:`load_model`, so a model file written by
:func:`save_model` is the only hand-off between stages: it carries the ``ModelSection`` it was built from,
and the loader rebuilds the exact architecture before loading the weights.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mak_ray import storage
from mak_ray.config import ModelSection

log = logging.getLogger(__name__)

FILE_FORMAT = 1

_ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetBackbone(ResNet):
    """torchvision's ResNet with scalable width and an optional small-image stem, ending at pooled features.

    torchvision hard-codes the stage widths 64/128/256/512, so ``__init__`` is re-stated here with the
    stage widths ``width * (1, 2, 4, 8)``; the blocks, ``_make_layer`` and ``forward`` are torchvision's own,
    and with ``width=64`` and ``small_stem=False`` the parameters and state-dict keys equal ``resnetXX()``'s
    (minus ``fc``, which is an identity here).
    """

    def __init__(self, arch: str, width: int = 64, small_stem: bool = False) -> None:
        if arch not in _ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(_ARCHS)}")
        block, layers = _ARCHS[arch]
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # Bottleneck's inner width = planes * base_width / 64 = planes
        if small_stem:  # 32-64 px inputs: keep resolution in the stem (SimCLR's CIFAR variant)
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = width * 8 * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class SimCLRModel(nn.Module):
    """Backbone + projection head. ``forward`` gives projections (for the contrastive loss), ``embed`` features."""

    def __init__(self, backbone: ResNetBackbone, proj_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        f = self.feature_dim
        # SimCLR's 2-layer MLP head (with BN as in SimCLR v2): F -> F -> proj_dim.
        self.head = nn.Sequential(
            nn.Linear(f, f, bias=False),
            nn.BatchNorm1d(f),
            nn.ReLU(inplace=True),
            nn.Linear(f, proj_dim),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features [B, F] (the representation used downstream)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections [B, proj_dim], not normalised."""
        return self.head(self.backbone(x))


def build_model(cfg: ModelSection) -> SimCLRModel:
    """A freshly initialised model for ``cfg`` (no pretrained weights)."""
    backbone = ResNetBackbone(cfg.arch, width=cfg.width, small_stem=cfg.small_stem)
    return SimCLRModel(backbone, cfg.proj_dim)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP / torch.compile wrapper, so saved keys never carry 'module.'."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def model_state_bytes(
    model: nn.Module, model_cfg: ModelSection, extra: dict[str, Any] | None = None
) -> bytes:
    """Serialise weights (on CPU) + the model config + ``extra`` into the model file format."""
    plain = _unwrap(model)
    state = {k: v.detach().to("cpu") for k, v in plain.state_dict().items()}
    payload = {
        "format": FILE_FORMAT,
        "model_config": dataclasses.asdict(model_cfg),
        "state_dict": state,
        "extra": dict(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_model(
    model: nn.Module, model_cfg: ModelSection, uri: str, extra: dict[str, Any] | None = None
) -> None:
    """Write one model file (local or s3://) holding weights, the model config and ``extra`` (epoch, metrics)."""
    storage.write_bytes(uri, model_state_bytes(model, model_cfg, extra))
    log.info("saved model to %s", uri)


def read_model_file(uri: str) -> dict[str, Any]:
    """The raw payload of a model file: ``format``, ``model_config``, ``state_dict``, ``extra``."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"model file not found: {uri} (was pretraining run and did it finish?)")
    data = storage.read_bytes(uri)
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_config" not in payload:
        raise ValueError(f"{uri} is not a mak-ray model file")
    return payload


def _state_dict_of(payload: Any, uri: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a mak-ray model file, a plain state dict, or one nested under
    ``state_dict`` / ``model`` (as many trainers save them); ``module.`` prefixes (DDP) are dropped."""
    if isinstance(payload, dict) and "model_config" in payload and "state_dict" in payload:
        state = payload["state_dict"]
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state = payload["state_dict"]
    elif isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        state = payload["model"]
    else:
        state = payload
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{uri} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_init_weights(model: SimCLRModel, uri: str) -> str:
    """Load the weights at ``uri`` into ``model`` before training; returns what was loaded (for the log).

    A mak-ray model file (or any state dict with ``backbone.`` and ``head.`` keys) sets the whole model; a
    torchvision ResNet state dict sets the backbone (its ``fc`` is dropped) and leaves the projection head
    at its initialisation. A missing key or a shape that does not fit raises, naming it and the model settings
    that decide it.
    """
    if not storage.exists(uri):
        raise FileNotFoundError(f"model.init_checkpoint: {uri} does not exist")
    payload = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    state = _state_dict_of(payload, uri)
    plain = _unwrap(model)
    if any(k.startswith("backbone.") for k in state):
        target, what = plain, "the whole model"
    else:
        target, what = plain.backbone, "the backbone (torchvision ResNet layout)"
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
            if keys
        )
        raise ValueError(
            f"model.init_checkpoint {uri} does not fit {what} ({detail}); model.arch, model.width and "
            "model.small_stem must match the checkpoint (torchvision's ResNets: width 64, small_stem false)"
        )
    target.load_state_dict(state)
    return what


def load_model(uri: str, device: str = "cpu") -> SimCLRModel:
    """Rebuild the model stored at ``uri`` on ``device``, in eval mode: the one loader for scoring and evaluation."""
    payload = read_model_file(uri)
    known = {f.name for f in dataclasses.fields(ModelSection)}
    cfg = ModelSection(**{k: v for k, v in payload["model_config"].items() if k in known})
    model = build_model(cfg)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
