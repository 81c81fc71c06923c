"""Fidelity on real near-OOD data (issue 21): does a selection beat random when the junk looks like the target?

Setup (``fidelity_lib.Setup``): a long-tailed Fashion-MNIST target of ~1,400 images (imbalance 50, tail order
seeded with 100 + seed, so not the demo's), a pool of 9,000 (600 per class + 3,000 real near-OOD images from
``mak_ray.demo.real_ood``: digits, faces, photo objects), K = 300; ResNet-18 width 8, 30 SimCLR epochs on the
target, R = 10 views, ECLE against a 1,024-sample pool bank. Ray-free: one process calls the library's
functions, with ``torch.set_num_threads(1)`` by default.

Per method and seed it prints the tail share (3 rarest target classes) and OOD share of the K picks, the
few-class (same 3 classes) and overall linear-probe accuracy after a warm-started retraining (10 epochs, as the
demo; ``--retrain-epochs``) on
target + picks, and the wall time (selection; retraining + probe). Random's expected shares (the pool's own
composition) are printed too, since one random draw of 300 is noisy. Models, scores and per-method results are
cached under ``--cache``, so a rerun only does what is missing.

    python -m bench.bench_fidelity                       # seeds 0 1, methods random mak mak_gated
    python -m bench.bench_fidelity --seeds 0 1 2 --methods random mak rarity-gated0.9 tailness
    python -m bench.bench_fidelity --shares-only         # no retraining: shares of every variant
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from bench.fidelity_lib import Setup, probe, retrain_and_probe
from bench.fidelity_prepare import prepare
from bench.fidelity_select import diagnostics, selections, shares

DEFAULT_METHODS = ["random", "mak", "mak_gated"]


def run_seed(args: argparse.Namespace, setup: Setup, seed: int) -> tuple[dict, dict, dict]:
    data, model, sc, cache = prepare(
        args.cache, seed, args.width, args.epochs, 0.2, args.pool_epochs, args.ood
    )
    t0 = time.perf_counter()
    picks, thresholds = selections(sc, args.k, seed)
    t_sel = (time.perf_counter() - t0) / len(picks)  # all variants at once; the mean per variant
    diag = diagnostics(sc, data.pool_y, data.pool_kind, data.target_y, seed) | {"thresholds": thresholds}
    pool_share = {
        "tail": float(np.isin(data.pool_y, data.tail).mean()),
        "ood": float((data.pool_y < 0).mean()),
    }
    results = {}
    methods = list(picks) if args.shares_only else args.methods
    for m in methods:
        r = shares(picks[m], data.pool_y, data.pool_kind, data.tail) | {"select_s": t_sel}
        if not args.shares_only:
            suffix = (
                ("" if args.retrain_epochs == 10 else f"-e{args.retrain_epochs}")
                + ("" if args.k == setup.k else f"-k{args.k}")
                + ("-scratch" if args.retrain_from == "scratch" else "")
            )
            rpath = cache / f"retrain-{m}{suffix}.json"
            if rpath.exists():
                acc = json.loads(rpath.read_text())
            else:
                acc = retrain_and_probe(
                    model,
                    args.width,
                    data,
                    picks[m],
                    seed,
                    epochs=args.retrain_epochs,
                    from_scratch=args.retrain_from == "scratch",
                )
                rpath.write_text(json.dumps(acc))
            r |= acc
        results[m] = r
    if not args.shares_only:
        bpath = cache / "probe-pretrained.json"
        if not bpath.exists():
            bpath.write_text(json.dumps(probe(model, data, seed)))
        results["pretrained only"] = json.loads(bpath.read_text())
    return results, diag, pool_share


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--pool-epochs", type=int, default=0, help="first pretrain on target + the unlabelled pool"
    )
    p.add_argument("--ood", choices=["real", "generated"], default="real", help="the pool's OOD kinds")
    p.add_argument("--retrain-epochs", type=int, default=10, help="retraining epochs")
    p.add_argument(
        "--retrain-from",
        choices=["pretrained", "scratch"],
        default="pretrained",
        help="warm-start the retraining (as the demo) or train a fresh model on target + picks (as the paper)",
    )
    p.add_argument("--k", type=int, default=Setup.k, help="the budget (picks per method)")
    p.add_argument("--shares-only", action="store_true", help="skip retraining; shares of every variant")
    p.add_argument("--cache", default="/tmp/fid")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--diagnostics", action="store_true", help="print each seed's diagnostics as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    setup = Setup()
    per_seed = {s: run_seed(args, setup, s) for s in args.seeds}
    methods = list(per_seed[args.seeds[0]][0])
    print(
        f"\nfidelity: width {args.width}, {args.epochs} epochs{f' after {args.pool_epochs} on target+pool' if args.pool_epochs else ''}, "
        f"K={args.k}, retrain {args.retrain_epochs} epochs from {args.retrain_from}, seeds {args.seeds}"
    )
    for s, (_, diag, pool) in per_seed.items():
        print(
            f"seed {s}: pool tail {pct(pool['tail'])} %, pool OOD {pct(pool['ood'])} % (random's expectation); "
            f"AUROC dist {diag['auroc_dist']:.2f}, dist(proj) {diag['auroc_dist_proj']:.2f}, "
            f"1-NN {diag['auroc_nn']:.2f}, ECLE {diag['auroc_ecle']:.2f}; beyond target p99: "
            f"dist {pct(diag['beyond_t99_dist'])} %, 1-NN {pct(diag['beyond_t99_nn'])} %, "
            f"ECLE {pct(diag['beyond_t99_ecle'])} %; spearman(ECLE, dist) {diag['spearman_ecle_dist']:.2f}"
        )
        if args.diagnostics:
            print(json.dumps(diag, default=float))
    cols = ["tail", "ood", "few_acc", "acc"]
    head = (
        "| method | "
        + " | ".join(f"{c} s{s}" for c in cols for s in args.seeds)
        + " | "
        + " | ".join(f"{c} mean" for c in cols)
        + " | select s | retrain s |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for m in methods:
        rows = [per_seed[s][0][m] for s in args.seeds]
        cells = [pct(r.get(c)) for c in cols for r in rows]
        means = [pct(np.mean([r[c] for r in rows])) if all(c in r for r in rows) else "-" for c in cols]
        sel = np.mean([r.get("select_s", np.nan) for r in rows])
        rt = np.mean([r.get("retrain_s", np.nan) for r in rows])
        print(f"| {m} | " + " | ".join(cells + means) + f" | {sel:.2f} | {rt:.0f} |")
    kinds = sorted(k for k in per_seed[args.seeds[0]][0][methods[0]] if k.startswith("ood-"))
    print("\nOOD share per kind, % of the K picks, mean over seeds")
    print("| method | " + " | ".join(kinds) + " |")
    print("|" + "---|" * (len(kinds) + 1))
    for m in methods:
        rows = [per_seed[s][0][m] for s in args.seeds]
        if all(k in r for r in rows for k in kinds):
            print(f"| {m} | " + " | ".join(pct(np.mean([r[k] for r in rows])) for k in kinds) + " |")


if __name__ == "__main__":
    main()
