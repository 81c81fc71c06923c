"""Pretrain and score one fidelity variant for some seeds, caching models and scores (see fidelity_lib).

python -m bench.fidelity_prepare --seeds 0 1 --width 8 --epochs 30 [--on-pool] [--cache /tmp/fid]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from bench.fidelity_lib import Setup, cached_run, make_data


def variant_name(width: int, epochs: int, temperature: float = 0.2, pool_epochs: int = 0) -> str:
    return f"w{width}-e{epochs}-t{temperature:g}" + (f"-pool{pool_epochs}" if pool_epochs else "")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--pool-epochs", type=int, default=0, help="first pretrain on target + unlabelled pool")
    p.add_argument("--cache", default="/tmp/fid")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for seed in a.seeds:
        data = make_data(Setup(), seed)
        name = variant_name(a.width, a.epochs, a.temperature, a.pool_epochs)
        cached_run(
            Path(a.cache) / name / f"seed{seed}", data, seed, a.width, a.epochs, a.temperature, a.pool_epochs
        )
        logging.info("done %s seed %d", name, seed)


if __name__ == "__main__":
    main()
