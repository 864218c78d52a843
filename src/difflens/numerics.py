"""Numerics made explicit: metric math runs in full float32 (no TF32) or float64."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """TF32 off (cuBLAS and cuDNN) and 'highest' float32 matmul precision, restored afterwards."""
    import torch

    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev[0], prev[1]
        torch.set_float32_matmul_precision(prev[2])
