"""Shared entrypoint for ``ray job submit ... -- python -m jobs.<stage> --config FILE [key=value ...]``.

Under ``ray job submit`` the driver runs on the cluster with RAY_ADDRESS set, so ``init_ray`` joins that
cluster; run locally, it starts an embedded instance. Each job is the matching CLI subcommand.
"""

from __future__ import annotations

import sys

from mak_ray.cli import main as cli_main


def run(stage: str, argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(cli_main([stage.replace("_", "-"), *args]))
