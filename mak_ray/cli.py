"""The ``mak-ray`` command: one subcommand per pipeline stage, plus ``pipeline``, ``status`` and ``demo``.

Every subcommand takes ``--config FILE`` and ``key=value`` overrides, validates the whole config before
any heavy work, and calls the same stage functions that the Ray jobs and the tests call. ``--dry-run`` checks
the config and the inputs and prints what a run would do; ``status`` prints what is done, stale or to do.

Exit codes: 0 success (``status``: every stage done), 1 ``status``: something is stale or to do,
2 configuration error, 3 missing or stale outputs of an earlier stage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mak_ray.config import ConfigError, MakConfig, load_config
from mak_ray.registry import STAGE_SPECS, STAGES

PIPELINE_HELP = "run all stages in order, skipping those that are done and current"
STATUS_HELP = (
    "print each stage as done, stale (with the reason) or to do, and scoring's shards; reads only markers, "
    "fingerprints and input listings. Exit 0 when every stage is done, 1 otherwise"
)


def _add_config_args(p: argparse.ArgumentParser, dry_run: bool = False) -> None:
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. select.budget=500")
    if dry_run:
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="check the config and the inputs, print the plan (inputs, stages to run or skip and why), "
            "run nothing",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mak-ray",
        description="MAK open-world sampling on Ray: pick the K pool images that most help contrastive "
        "learning on a long-tailed target set.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in STAGE_SPECS.values():
        _add_config_args(sub.add_parser(spec.command, help=spec.help, description=spec.help), dry_run=True)
    _add_config_args(sub.add_parser("pipeline", help=PIPELINE_HELP, description=PIPELINE_HELP), dry_run=True)
    _add_config_args(sub.add_parser("status", help=STATUS_HELP, description=STATUS_HELP))
    demo = sub.add_parser("demo", help="build the Fashion-MNIST demo data, then run the pipeline on it")
    demo.add_argument(
        "--preset",
        default="small",
        help="tiny (generated data), small (2 CPUs, 15 min), nearood (2 CPUs, ~80 min: the method at work), medium, full",
    )
    demo.add_argument(
        "--data-only", action="store_true", help="build the demo data only (the paths configs/PRESET names)"
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild the demo data when its folder holds demo data made with other settings",
    )
    demo.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    demo.add_argument(
        "--data-out", default=None, help="where to write the demo data (default demo-data/PRESET)"
    )
    demo.add_argument("--output", default=None, help="run output URI (default: the preset's run.output_uri)")
    demo.add_argument("--synthetic", action="store_true", help="generated data instead of Fashion-MNIST")
    _add_config_args(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mak_ray import pipeline
    from mak_ray.demo.run import run_demo
    from mak_ray.runstate import StaleOutputs

    try:
        if args.command == "demo":
            result = run_demo(
                preset=args.preset,
                data_dir=args.data_dir,
                data_out=args.data_out,
                output=args.output,
                synthetic=args.synthetic,
                config_path=args.config,
                overrides=args.overrides,
                data_only=args.data_only,
                overwrite=args.overwrite,
            )
        elif args.command == "status":
            return _status(load_config(args.config, args.overrides))
        else:
            cfg = load_config(args.config, args.overrides)
            stages = STAGES if args.command == "pipeline" else (args.command.replace("-", "_"),)
            if args.dry_run:
                print("\n".join(pipeline.dry_run(cfg, stages)))
                return 0
            if args.command == "pipeline":
                result = pipeline.run_pipeline(cfg)
            else:
                result = pipeline.run_stage(stages[0], cfg)
    except ConfigError as e:
        print(f"mak-ray: configuration error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, StaleOutputs) as e:
        print(f"mak-ray: {e}", file=sys.stderr)
        return 3
    if result is not None:
        print(result)
    return 0


def _status(cfg: MakConfig) -> int:
    from mak_ray.fingerprint import InputDigests
    from mak_ray.layout import RunLayout
    from mak_ray.runstate import describe, plan_stages

    states = plan_stages(cfg, RunLayout(cfg.run.output_uri), InputDigests(cfg.data))
    print(f"run: {cfg.run.output_uri}")
    print("\n".join(describe(states)))
    return 0 if all(s.done for s in states) else 1


if __name__ == "__main__":
    sys.exit(main())
