"""SplitMix64's finaliser, vectorised: the one integer mixer behind every seeded draw that must not depend on
order (the random baseline's per-id key, the manifest's sampling permutation)."""

from __future__ import annotations

import numpy as np


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over uint64 values (arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
