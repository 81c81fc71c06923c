"""The CPU-checkable parts of bench/gpu_check: rank correlation, utilisation sampling, and the whole check on a CPU
with a tiny model (its GPU side replaced by CPU bf16 autocast)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench.gpu_check import UtilSampler, main, rankdata, spearman


def test_rankdata_averages_ties_and_spearman_matches_the_formula() -> None:
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.5, size=200)
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    want = 1 - 6 * ((ra - rb) ** 2).sum() / (200 * (200**2 - 1))
    assert spearman(a, b) == pytest.approx(want, abs=1e-12)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)


def test_util_sampler_keeps_only_the_recorded_window() -> None:
    script = "import sys, time\nfor v in (10, 20, 'x', 30):\n    print(v, flush=True); time.sleep(0.3)\n"
    s = UtilSampler(command=[sys.executable, "-c", script]).start()
    s.record(True)
    import time

    time.sleep(1.5)
    s.stop()
    assert s.values == [10.0, 20.0, 30.0]  # the unparsable line is skipped
    assert s.summary().startswith("mean 20%")
    assert UtilSampler(command=["true"]).summary() == "n/a (no samples)"


def test_quick_check_runs_on_the_cpu(capsys) -> None:
    quick = ["--device", "cpu", "--quick", "--phases", "throughput", "correlation", "--workers", "1"]
    main(quick + ["--seconds", "1", "--threads", "1", "--train-steps", "4", "--corr-images", "16"])
    out = capsys.readouterr().out
    assert "images/s on the CPU" in out and "GPU utilisation in steady state: n/a" in out
    assert "SimCLR training, plain loop (no Ray Train)" in out
    for col in ("ecle", "proximity"):
        line = next(x for x in out.splitlines() if x.startswith(f"rank correlation of {col}"))
        rho = float(line.split(": ")[1].split()[0])
        assert 0.9 < rho <= 1.0  # float32 against bf16 on a tiny model: close, not identical
