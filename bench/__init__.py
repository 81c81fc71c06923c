"""Benchmarks (`make bench`): each prints figures and ratios measured side by side in one run."""

from __future__ import annotations

import threading


def load1() -> str:
    """1-minute load average: the machine may be shared, and every figure here is wall time."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"


def current_rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Peak of this process's current resident set while active (ru_maxrss never goes down)."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
