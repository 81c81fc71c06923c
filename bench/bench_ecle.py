"""Benchmark 3: ECLE with a negative bank.

    python -m bench.bench_ecle            # 50,000 samples, R = 10, D = 128, bank 2,048
    python -m bench.bench_ecle --small    # 5,000 samples

batch_size 512 (511 negatives per sample and repeat), 10 repeats, all 45 view
pairs.  Cost is O(N * R^2 * M * D): one GEMM per chunk against every bank
view, one in-place exp, then a 0/1 batched matmul per (sample, repeat)
negative window.  Prints wall and process CPU seconds (CPU time is the steadier
figure on a shared machine) and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench import load1
from mak_ray.mak import ecle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--bank", type=int, default=2_048)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    n = 5_000 if args.small else args.n
    rng = np.random.default_rng(0)
    views = rng.normal(size=(args.views, n, 128)).astype(np.float32)
    bank = rng.normal(size=(args.views, args.bank, 128)).astype(np.float32)
    keys = [f"s3://pool/{i:08d}.jpg" for i in range(n)]
    print(
        f"ECLE with bank: N={n:,}, R={args.views}, D=128, bank M={args.bank:,}, batch 512, "
        f"repeats {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    load0 = load1()
    t0, c0 = time.perf_counter(), time.process_time()
    out = ecle(views, bank, batch_size=512, repeats=args.repeats, keys=keys)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"  {dt:.2f} s wall   {n / dt:,.0f} samples/s   {cpu:.2f} s CPU ({n / cpu:,.0f} samples per CPU-s)"
        f"   load avg {load0} -> {load1()}   (mean ECLE {out.mean():.4f})"
    )


if __name__ == "__main__":
    main()
