"""Benchmark 3: ECLE with a negative bank, on the CPU against the implementation it replaced, and on a GPU.

    python -m bench.bench_ecle            # 50,000 samples, R = 10, D = 128, bank 2,048
    python -m bench.bench_ecle --small    # 5,000 samples
    python -m bench.bench_ecle --small --devices cpu cuda

batch_size 512 (511 negatives per sample and repeat), 10 repeats, all 45 view
pairs.  Cost is O(N * R^2 * M * D): one GEMM per chunk against every bank
view, one in-place exp, then a 0/1 batched matmul per (sample, repeat)
negative window.  Rows, each on the same inputs:

- ``replaced (cpu)``: the CPU implementation before the device path
  (``tests/reference_ecle.py``, numpy window masks), through the same
  normalisation as ``ecle()``;
- ``ecle() (cpu)``: the public function, i.e. :class:`BankECLE` on the CPU;
- ``BankECLE (<device>)``: inputs already on the device, the result read back.

Prints wall and process CPU seconds (CPU time is the steadier figure on a
shared machine), the largest difference to the replaced implementation, and
the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench import load1
from mak_ray.mak import ecle
from mak_ray.mak.ecle import BankECLE, keys_to_u64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--bank", type=int, default=2_048)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--devices", nargs="*", default=[], help="also time BankECLE on these devices (e.g. cuda)"
    )
    ap.add_argument(
        "--skip-replaced", action="store_true", help="do not time the replaced CPU implementation"
    )
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

    def report(name: str, fn) -> np.ndarray:
        load0 = load1()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        diff = f"   max |diff| to replaced {np.abs(out - ref).max():.2e}" if ref is not None else ""
        print(
            f"  {name:<20} {dt:7.2f} s wall   {n / dt:8,.0f} samples/s   {cpu:7.2f} s CPU "
            f"({n / cpu:,.0f} samples per CPU-s)   load avg {load0} -> {load1()}   "
            f"(mean ECLE {out.mean():.4f}){diff}",
            flush=True,
        )
        return out

    ref = None
    zn = views / np.linalg.norm(views, axis=-1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=-1, keepdims=True)
    k64 = keys_to_u64(keys, n)
    if not args.skip_replaced:
        from tests.reference_ecle import ecle_bank

        ref = report(
            "replaced (cpu)",
            lambda: ecle_bank(torch.from_numpy(zn), torch.from_numpy(bn), k64, 0.2, 511, args.repeats, 0),
        )
    report("ecle() (cpu)", lambda: ecle(views, bank, batch_size=512, repeats=args.repeats, keys=keys))
    for name in args.devices:
        device = torch.device(name)
        engine = BankECLE(
            torch.from_numpy(bn), temperature=0.2, n_neg=511, repeats=args.repeats, seed=0, device=device
        )
        z = torch.from_numpy(zn).to(device)
        engine(z[:, :64], k64[:64])  # warm-up (kernels, allocator)
        report(f"BankECLE ({name})", lambda engine=engine, z=z: engine(z, k64).cpu().numpy())


if __name__ == "__main__":
    main()
