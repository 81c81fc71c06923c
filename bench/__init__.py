"""Benchmarks (`make bench`): each prints figures and ratios measured side by side in one run."""


def load1() -> str:
    """1-minute load average: the machine may be shared, and every figure here is wall time."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"
