"""Typed run configuration: YAML files plus ``key=value`` overrides, validated before any heavy work.

Every stage (CLI subcommand, Ray job, test) reads the same :class:`MakConfig`, so a run is described by one
file. Validation is strict: unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the dotted field, because a typo found after an hour of scoring costs an hour.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mak_ray.registry import METHODS


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; ``field`` is the dotted name."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"config field '{field_name}': {message}")


def _rng(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def positive() -> dict[str, Any]:
    return _rng(0, None, lo_open=True)


def at_least(lo: float) -> dict[str, Any]:
    return _rng(lo, None)


def between(lo: float, hi: float) -> dict[str, Any]:
    return _rng(lo, hi)


@dataclass
class RunSection:
    """Where a run writes and how it is seeded."""

    name: str = "mak-demo"
    output_uri: str = "runs/mak-demo"  # local folder or s3://bucket/prefix; every stage writes under it
    seed: int = 0
    ray_address: str | None = None  # None: RAY_ADDRESS if set, else a local instance


DEFAULT_SKIP = ("_SUCCESS", "_markers/", ".*", "__MACOSX/", "Thumbs.db")


@dataclass
class DataSection:
    """Input sets. Each is a local folder or s3:// prefix of images, tar shards, or Parquet."""

    target: str = ""
    pool: str = ""
    eval_train: str = ""  # balanced labelled train set for the linear probe
    eval_test: str = ""  # balanced labelled test set
    format: Literal["auto", "images", "tar", "parquet"] = "auto"
    labels_from_parent: bool = True  # class = parent folder name (used for evaluation and reports only)
    id_column: str = "id"
    image_column: str = "image"
    label_column: str = "label"
    image_size: int = field(default=32, metadata=between(8, 1024))
    # decoded frames keep their aspect ratio, shorter side resized to at most this; None: ceil(1.15 * image_size)
    decode_size: int | None = field(default=None, metadata=between(8, 4096))
    max_pixels: int = field(default=50_000_000, metadata=positive())  # decompression-bomb guard
    files_per_shard: int = field(default=1000, metadata=positive())  # folder inputs are cut into shards
    # a Parquet file with more rows is cut into shards of whole row groups of about this many rows, so that
    # one big file still spreads over the actor pool (a file with one row group stays one shard)
    parquet_rows_per_shard: int = field(default=10_000, metadata=positive())
    # entries skipped by name (fnmatch on one path component; a trailing "/" matches folders only), each
    # counted by reason in the plan and the scoring summary: the project's own markers, dotfiles, macOS and
    # Windows litter
    skip: list[str] = field(default_factory=lambda: list(DEFAULT_SKIP))
    follow_symlinks: bool = False  # follow folder symlinks (each real folder is listed once)
    # CPUs per read/decode task: fractional, so that reads still run beside a trainer or actors that hold
    # most of a small machine's CPUs (a whole CPU per read task hangs a 2-CPU run)
    read_cpus: float = field(default=0.5, metadata=positive())


@dataclass
class ModelSection:
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    small_stem: bool = True  # 3x3 conv, no max-pool: for inputs of 64 px and below
    proj_dim: int = field(default=128, metadata=positive())
    width: int = field(default=64, metadata=positive())  # first-stage channels; 64 is torchvision's ResNet
    # weights to start training from (local or s3://): a torchvision ResNet state dict (arch, width 64 and
    # small_stem false must match it; its fc layer is ignored) or a mak-ray model file; "" = random init
    init_checkpoint: str = ""


@dataclass
class TrainSection:
    """SimCLR training (pretraining on the target set, and retraining with selections)."""

    epochs: int = field(default=100, metadata=positive())
    batch_size: int = field(default=256, metadata=at_least(2))
    lr: float = field(default=0.5, metadata=positive())  # at batch 256; scaled linearly with batch size
    momentum: float = field(default=0.9, metadata=between(0, 1))
    weight_decay: float = field(default=1e-4, metadata=at_least(0))
    temperature: float = field(default=0.2, metadata=positive())
    warmup_epochs: int = field(default=10, metadata=at_least(0))
    num_workers: int = field(default=1, metadata=positive())
    use_gpu: bool = False
    cpus_per_worker: float = field(default=1.0, metadata=positive())
    checkpoint_every: int = field(default=1, metadata=positive())  # epochs
    max_failures: int = field(default=3, metadata=at_least(0))
    # retrain only: start from the pretrained model instead of from scratch (the paper retrains from scratch;
    # a warm start lets a CPU demo retrain every method in a few epochs)
    from_pretrained: bool = False


@dataclass
class ScoreSection:
    """Pool inference: R augmented views for ECLE, one clean view for the embedding."""

    views: int = field(default=10, metadata=at_least(2))
    ecle_batch_size: int = field(default=512, metadata=at_least(2))
    ecle_repeats: int = field(default=10, metadata=positive())
    temperature: float = field(default=0.2, metadata=positive())
    bank_size: int = field(default=4096, metadata=at_least(2))  # negative bank drawn uniformly from the pool
    # the bank is drawn once per model and kept (a grown pool scores only its new shards against it); true
    # draws it again, and then every shard is scored again
    redraw_bank: bool = False
    centroids: int = field(default=10, metadata=positive())
    batch_size: int = field(default=64, metadata=positive())  # images per map_batches call
    # Upper bound of the actor pool; 0 = one actor per CPU (CPU scoring: each runs one torch thread) or per
    # gpus_per_actor of the GPUs, counted in the cluster when the stage starts (set it on autoscaling clusters).
    num_actors: int = field(default=0, metadata=at_least(0))
    min_actors: int = field(default=1, metadata=positive())
    cpus_per_actor: float = field(default=0.5, metadata=positive())
    gpus_per_actor: float = field(default=0.0, metadata=at_least(0))
    embedding_dtype: Literal["float16", "float32"] = "float16"
    log_every_s: float = field(default=30.0, metadata=positive())


@dataclass
class SelectSection:
    budget: int = field(default=1000, metadata=positive())  # K
    core_ratio: float = field(default=1.5, metadata=at_least(1))
    loss_weight: float = field(default=0.5, metadata=between(0, 1))
    # mak_gated keeps pool images no farther from their nearest target image than this quantile of the
    # target's own nearest-neighbour distances (see mak_ray/mak/gate.py)
    gate_quantile: float = field(default=0.8, metadata=between(0, 1))
    methods: list[str] = field(default_factory=lambda: ["mak", "random"])
    kcenter_shards: int = field(default=1, metadata=positive())  # >1: two-stage K-center on Ray workers
    per_shard_k: int | None = None
    # where K-center runs: auto = on a GPU when the Ray cluster has one, else on the CPU
    kcenter_device: Literal["auto", "cpu", "cuda"] = "auto"
    # the kcenter baseline holds every usable row's embedding in one task; refused above this many bytes
    # (None: a quarter of the driver node's memory)
    kcenter_max_bytes: int | None = None


@dataclass
class EvalSection:
    lr: float = field(default=0.1, metadata=positive())
    epochs: int = field(default=100, metadata=positive())
    weight_decay: float = field(default=1e-4, metadata=at_least(0))
    batch_size: int = field(default=256, metadata=positive())
    few_shot: float = field(default=0.01, metadata=positive())  # <1: fraction per class; >=1: count per class
    many_threshold: int = field(default=100, metadata=positive())  # class count > this: "many"
    few_threshold: int = field(default=20, metadata=positive())  # class count < this: "few"


@dataclass
class MakConfig:
    """The whole run. Stages read only the sections they need."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: TrainSection = field(default_factory=TrainSection)
    retrain: TrainSection = field(default_factory=TrainSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    select: SelectSection = field(default_factory=SelectSection)
    evaluate: EvalSection = field(default_factory=EvalSection)

    def check(self) -> None:
        """Cross-field rules that single-field ranges cannot express."""
        known = METHODS
        for i, m in enumerate(self.select.methods):
            if m not in known:
                raise ConfigError(f"select.methods[{i}]", f"unknown method {m!r}; choose from {list(known)}")
        if self.evaluate.few_threshold > self.evaluate.many_threshold:
            raise ConfigError("evaluate.few_threshold", "must not exceed evaluate.many_threshold")
        if self.data.decode_size is not None and self.data.decode_size < self.data.image_size:
            raise ConfigError("data.decode_size", "must be at least data.image_size")
        if self.score.num_actors and self.score.min_actors > self.score.num_actors:
            raise ConfigError("score.min_actors", "must not exceed score.num_actors")
        out = self.run.output_uri.rstrip("/")
        for name in ("target", "pool", "eval_train", "eval_test"):
            src = getattr(self.data, name).rstrip("/")
            if src and (out == src or out.startswith(src + "/")):
                raise ConfigError("run.output_uri", f"must not lie inside the input data.{name} ({src})")


# ---------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; YAML gives ints where floats are meant, nothing else."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(name, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(name, f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(name, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(name, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, name)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    raise ConfigError(name, f"unsupported type {tp}")


def _check_range(value: Any, meta: dict[str, Any], name: str) -> None:
    if value is None or "lo" not in meta:
        return
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (value <= lo if meta["lo_open"] else value < lo):
        raise ConfigError(name, f"must be {'>' if meta['lo_open'] else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(name, f"must be <= {hi}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(dotted, f"unknown key; known keys here: {sorted(fields)}")
    kwargs = {}
    for fname, f in fields.items():
        dotted = f"{prefix}.{fname}" if prefix else fname
        if fname in data:
            kwargs[fname] = _coerce(data[fname], hints[fname], dotted)
        elif dataclasses.is_dataclass(hints[fname]):
            kwargs[fname] = _build(hints[fname], {}, dotted)
        else:
            continue
        _check_range(kwargs[fname], dict(f.metadata), dotted)
    obj = cls(**kwargs)
    for fname, f in fields.items():  # defaults are checked too, so a bad default cannot hide
        _check_range(getattr(obj, fname), dict(f.metadata), f"{prefix}.{fname}" if prefix else fname)
    return obj


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(item, "override must look like section.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars/lists) onto a nested dict."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(path), f"'{part}' is not a section")
        node[path[-1]] = value
    return data


def _absolute(uri: str) -> str:
    """Local paths become absolute: Ray workers run in other directories than the driver."""
    if not uri or "://" in uri:
        return uri
    import os

    return os.path.abspath(uri)


def config_from_dict(data: dict[str, Any]) -> MakConfig:
    cfg = _build(MakConfig, data or {})
    cfg.run.output_uri = _absolute(cfg.run.output_uri)
    for name in ("target", "pool", "eval_train", "eval_test"):
        setattr(cfg.data, name, _absolute(getattr(cfg.data, name)))
    cfg.model.init_checkpoint = _absolute(cfg.model.init_checkpoint)
    cfg.check()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> MakConfig:
    """Read a YAML file (optional) and apply overrides; raise ConfigError naming the first bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("<root>", f"{path} must hold a mapping at the top level")
        data = loaded
    return config_from_dict(merge_overrides(data, list(overrides or [])))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: MakConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
