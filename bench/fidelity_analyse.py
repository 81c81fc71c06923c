"""Selection shares and diagnostics of cached fidelity runs (no training): seconds per variant.

    python -m bench.fidelity_analyse --variant w8-e30-t0.2 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.fidelity_lib import Setup, make_data
from bench.fidelity_select import diagnostics, selections, shares


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cache", default="/tmp/fid")
    a = p.parse_args()
    torch.set_num_threads(1)
    setup = Setup()
    rows: dict[str, list[dict]] = {}
    for seed in a.seeds:
        data = make_data(setup, seed)
        sc = dict(np.load(Path(a.cache) / a.variant / f"seed{seed}" / "scores.npz"))
        picks, th = selections(sc, setup.k, seed)
        for name, idx in picks.items():
            rows.setdefault(name, []).append(shares(idx, data.pool_y, data.pool_kind, data.tail))
        diag = diagnostics(sc, data.pool_y, data.pool_kind, data.target_y, seed)
        diag["counts"] = data.counts
        diag["tail"] = data.tail
        diag["thresholds"] = th
        print(f"--- {a.variant} seed {seed} diagnostics")
        print(json.dumps(diag, indent=None, default=float))
    kinds = [k for k in rows["random"][0] if k.startswith("ood-")]
    print(f"\n{a.variant}: tail / OOD share % per seed, mean; OOD kinds mean")
    print(f"{'method':16s} " + " ".join(f"{'s' + str(s):>11s}" for s in a.seeds) + f" {'mean':>11s} " + " ".join(f"{k[4:]:>8s}" for k in kinds))
    for name, rs in rows.items():
        cells = " ".join(f"{100 * r['tail']:5.1f}/{100 * r['ood']:5.1f}" for r in rs)
        mt, mo = np.mean([r["tail"] for r in rs]), np.mean([r["ood"] for r in rs])
        km = " ".join(f"{100 * np.mean([r[k] for r in rs]):8.1f}" for k in kinds)
        print(f"{name:16s} {cells} {100 * mt:5.1f}/{100 * mo:5.1f} {km}")


if __name__ == "__main__":
    main()
