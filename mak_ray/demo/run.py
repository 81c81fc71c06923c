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
) -> str:
    """Build the Fashion-MNIST (or generated) demo data, then run the whole pipeline on it."""
    import yaml

    from mak_ray.config import config_from_dict, merge_overrides
    from mak_ray.demo.make import make_demo_data
    from mak_ray.pipeline import run_pipeline

    data_out = data_out or f"demo-data/{preset}"
    output = output or f"runs/demo-{preset}"
    path = config_path or repo_config(f"demo-{preset}") or repo_config(preset)
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    info = make_demo_data(data_out, preset, data_dir=data_dir, synthetic=synthetic)
    paths = info["paths"]
    merge_overrides(
        data,
        [
            f"data.target={paths['target']}",
            f"data.pool={paths['pool']}",
            f"data.eval_train={paths['eval_train']}",
            f"data.eval_test={paths['eval_test']}",
            f"run.output_uri={output}",
            f"select.budget={info['suggested_budget']}",
        ]
        + list(overrides or []),
    )
    return run_pipeline(config_from_dict(data))
