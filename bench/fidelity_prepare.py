"""Pretrain and score one fidelity variant for some seeds, caching models and scores (see fidelity_lib).

    python -m bench.fidelity_prepare --seeds 0 1 --width 8 --epochs 30 [--pool-epochs 8] [--ood generated]

``--ood generated`` fills the pool's OOD share with the demo's generated kinds instead of the real ones; the
target and its pretrained model are the same as with real OOD, so that model is reused when already cached.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from bench.fidelity_lib import REAL_KINDS, Data, Setup, cached_run, make_data
from mak_ray.demo.ood import OOD_KINDS


def variant_name(
    width: int, epochs: int, temperature: float = 0.2, pool_epochs: int = 0, ood: str = "real"
) -> str:
    return (
        f"w{width}-e{epochs}-t{temperature:g}"
        + (f"-pool{pool_epochs}" if pool_epochs else "")
        + ("-genood" if ood == "generated" else "")
    )


def prepare(
    cache_root: str, seed: int, width: int, epochs: int, temperature: float, pool_epochs: int, ood: str
) -> tuple[Data, torch.nn.Module, dict, Path]:
    setup = Setup(ood_kinds=OOD_KINDS if ood == "generated" else REAL_KINDS)
    data = make_data(setup, seed)
    cache = Path(cache_root) / variant_name(width, epochs, temperature, pool_epochs, ood) / f"seed{seed}"
    if ood == "generated" and pool_epochs == 0 and not (cache / "model.pt").exists():
        real = Path(cache_root) / variant_name(width, epochs, temperature) / f"seed{seed}"
        if (real / "model.pt").exists():  # the target, and so the pretrained model, is the same
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copy(real / "model.pt", cache / "model.pt")
    model, scores = cached_run(cache, data, seed, width, epochs, temperature, pool_epochs)
    return data, model, scores, cache


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--pool-epochs", type=int, default=0, help="first pretrain on target + unlabelled pool")
    p.add_argument("--ood", choices=["real", "generated"], default="real")
    p.add_argument("--cache", default="/tmp/fid")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for seed in a.seeds:
        prepare(a.cache, seed, a.width, a.epochs, a.temperature, a.pool_epochs, a.ood)
        logging.info("done seed %d", seed)


if __name__ == "__main__":
    main()
