"""The few array operations K-center needs, for numpy and torch (CPU or CUDA).

One algorithm is written against this shim so that the numpy, torch-CPU and
torch-CUDA paths pick exactly the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Ops:
    """numpy implementation; ``TorchOps`` overrides what differs."""

    name = "numpy"

    def asarray(self, x: np.ndarray) -> Any:
        return x

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def empty(self, n: int | tuple[int, ...], dtype: Any) -> Any:
        return np.empty(n, dtype=dtype)

    def full(self, n: int, value: float, dtype: Any) -> Any:
        return np.full(n, value, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return np.zeros(shape, dtype=dtype)

    def float_dtype(self, like: Any) -> Any:
        return like.dtype

    def int_dtype(self) -> Any:
        return np.int64

    def nonzero(self, mask: Any) -> Any:
        return np.flatnonzero(mask)

    def clamp0(self, x: Any) -> Any:
        return np.maximum(x, 0, out=x)

    def sqrt(self, x: Any) -> Any:
        return np.sqrt(x)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)

    def row_min(self, x: Any) -> tuple[Any, Any]:
        idx = x.argmin(axis=1)
        return np.take_along_axis(x, idx[:, None], axis=1)[:, 0], idx

    def arange(self, n: int) -> Any:
        return np.arange(n)

    def scalar(self, x: Any) -> float:
        return float(x)


class TorchOps(Ops):
    def __init__(self, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"

    def asarray(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def empty(self, n: int | tuple[int, ...], dtype: Any) -> Any:
        return self.torch.empty(n, dtype=dtype, device=self.device)

    def full(self, n: int, value: float, dtype: Any) -> Any:
        return self.torch.full((n,), value, dtype=dtype, device=self.device)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def int_dtype(self) -> Any:
        return self.torch.int64

    def nonzero(self, mask: Any) -> Any:
        return self.torch.nonzero(mask).squeeze(1)

    def clamp0(self, x: Any) -> Any:
        return x.clamp_(min=0)

    def sqrt(self, x: Any) -> Any:
        return self.torch.sqrt(x)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b)

    def row_min(self, x: Any) -> tuple[Any, Any]:
        vals, idx = x.min(dim=1)
        return vals, idx

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, device=self.device)

    def scalar(self, x: Any) -> float:
        return float(x.item()) if hasattr(x, "item") else float(x)


def get_ops(backend: str, device: str) -> Ops:
    """numpy on ``cpu`` with ``backend='numpy'``; torch on any other device or with ``backend='torch'``."""
    if device != "cpu" or backend == "torch":
        return TorchOps(device)
    if backend == "numpy":
        return Ops()
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
