"""Learning-rate schedule: linear scaling with batch size, linear warmup, then cosine decay, per step."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """SimCLR's linear rule: ``base_lr`` is the rate at batch 256."""
    return base_lr * global_batch / 256.0


class WarmupCosine:
    """Multiplier for ``LambdaLR``: 0 -> 1 linearly over ``warmup_steps``, then cosine to 0 at ``total_steps``.

    A class (not a closure) so that ``LambdaLR.state_dict`` can save and restore it with the checkpoint.
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
