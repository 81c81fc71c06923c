"""The ``mak-ray`` command: one subcommand per pipeline stage, plus ``pipeline`` and ``demo``.

Every subcommand takes ``--config FILE`` and ``key=value`` overrides, validates the whole config before
any heavy work, and calls the same stage functions that the Ray jobs and the tests call.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mak_ray.config import ConfigError, load_config
from mak_ray.registry import STAGE_SPECS

PIPELINE_HELP = "run all stages in order, skipping those whose outputs are complete"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. select.budget=500")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mak-ray",
        description="MAK open-world sampling on Ray: pick the K pool images that most help contrastive "
        "learning on a long-tailed target set.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in STAGE_SPECS.values():
        _add_config_args(sub.add_parser(spec.command, help=spec.help, description=spec.help))
    _add_config_args(sub.add_parser("pipeline", help=PIPELINE_HELP, description=PIPELINE_HELP))
    demo = sub.add_parser("demo", help="build the Fashion-MNIST demo data, then run the pipeline on it")
    demo.add_argument("--preset", default="small", help="tiny (generated data), small (2 CPUs), medium, full")
    demo.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    demo.add_argument(
        "--data-out", default=None, help="where to write the demo data (default demo-data/PRESET)"
    )
    demo.add_argument("--output", default=None, help="run output URI (default runs/demo-PRESET)")
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
            )
        elif args.command == "pipeline":
            result = pipeline.run_pipeline(load_config(args.config, args.overrides))
        else:
            cfg = load_config(args.config, args.overrides)
            result = pipeline.run_stage(args.command.replace("-", "_"), cfg)
    except ConfigError as e:
        print(f"mak-ray: configuration error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"mak-ray: {e}", file=sys.stderr)
        return 3
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
