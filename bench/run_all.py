"""`make bench`: run every benchmark at the issue's sizes, one after another, and keep their output.

Each benchmark prints its own figures and ratios measured side by side in one run. Set BENCH_QUICK=1 for the
small sizes (a smoke run of a few minutes). Output is also saved under bench-out/ with the machine load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

FULL = [
    ["bench.bench_kcenter"],
    ["bench.bench_two_stage"],
    ["bench.bench_ecle"],
    ["bench.bench_augment"],
    ["bench.bench_train"],
    ["bench.bench_score", "--full"],
    ["bench.bench_score", "--full", "--model", "default"],
    ["bench.bench_scale"],
]
QUICK = [
    ["bench.bench_kcenter", "--small"],
    ["bench.bench_two_stage", "--small"],
    ["bench.bench_ecle", "--small"],
    ["bench.bench_augment"],
    ["bench.bench_train", "--images", "256", "--epochs", "3"],
    ["bench.bench_score"],
    ["bench.bench_scale", "--small"],
]


def _stem(cmd: list[str]) -> str:
    """Output file name: the module, plus the options that tell two runs of it apart (not ``--full``)."""
    extra = [a.lstrip("-") for a in cmd[1:] if a not in ("--full", "--small")]
    return "-".join([cmd[0].split(".")[-1], *extra])


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    out_dir = Path("bench-out")
    out_dir.mkdir(exist_ok=True)
    failed = 0
    for cmd in QUICK if quick else FULL:
        module = cmd[0]
        if not Path(module.replace(".", "/") + ".py").exists():
            print(f"== {module}: not present, skipped", flush=True)
            continue
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        print(f"\n== {' '.join(cmd)}  (load average before: {' '.join(load)})", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True)
        text = proc.stdout + (proc.stderr if proc.returncode else "")
        print(text, flush=True)
        print(f"== {module}: exit {proc.returncode} in {time.perf_counter() - t0:.1f} s", flush=True)
        (out_dir / f"{_stem(cmd)}.txt").write_text(text)
        failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
