"""``mak-ray demo``: build the demo data, then run the whole pipeline on it with a preset config."""

from __future__ import annotations

from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


def repo_config(name: str) -> Path | None:
    """A preset config shipped in the repository's configs/ folder, if present."""
    path = REPO_CONFIGS / f"{name}.yaml"
    return path if path.exists() else None


def run_demo(
    *,
    preset: str = "small",
    data_dir: str | None = None,
    data_out: str | None = None,
    output: str | None = None,
    synthetic: bool = False,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    data_only: bool = False,
    overwrite: bool = False,
) -> str:
    """Build the Fashion-MNIST (or generated) demo data under ``data_out`` (default ``demo-data/PRESET``, the
    folder the preset configs name), then run the whole pipeline on it with the preset's config; returns the
    report's path, or with ``data_only`` the data folder. The preset's own ``select.budget`` and
    ``run.output_uri`` hold unless given; a config without a budget gets the demo's suggested one (10 % of
    the target)."""
    import yaml

    from mak_ray.config import config_from_dict, merge_overrides
    from mak_ray.demo.make import make_demo_data
    from mak_ray.pipeline import run_pipeline

    data_out = data_out or f"demo-data/{preset}"
    info = make_demo_data(data_out, preset, data_dir=data_dir, synthetic=synthetic, overwrite=overwrite)
    if data_only:
        return data_out
    path = config_path or repo_config(f"demo-{preset}") or repo_config(preset)
    data = (yaml.safe_load(Path(path).read_text()) if path else None) or {}
    paths = info["paths"]
    given = [f"data.{name}={paths[name]}" for name in ("target", "pool", "eval_train", "eval_test")]
    if output or "output_uri" not in data.get("run", {}):
        given.append(f"run.output_uri={output or f'runs/demo-{preset}'}")
    if "budget" not in data.get("select", {}):
        given.append(f"select.budget={info['suggested_budget']}")
    merge_overrides(data, given + list(overrides or []))
    return run_pipeline(config_from_dict(data))
