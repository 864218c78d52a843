"""Backends of the k-NN engine: a float32 tile ``A_aug @ B_aug^T`` and a few reductions of it, returned
as numpy arrays.

:class:`NumpyOps` (OpenBLAS sgemm) serves ``device="cpu"`` without importing torch, which keeps the peak
memory small; :class:`TorchOps` serves ``"cuda"``/``"cuda:N"``/``"mps"``, inside :func:`strict_matmul`
(TF32 and reduced-precision shortcuts off, so the error bound of :mod:`~difflens.metrics.knn.exact` holds).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from difflens.errors import DifflensError

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]   # (row, column, float64 tile value) of selected entries


class NumpyOps:
    """CPU backend: numpy arrays, OpenBLAS sgemm."""

    def put(self, a: np.ndarray) -> Any:
        return a

    def empty(self, n: int) -> Any:
        return np.empty(n, dtype=np.float32)

    def tile(self, buf: Any, left: Any, right: Any) -> Any:
        out = buf[: left.shape[0] * right.shape[0]].reshape(left.shape[0], right.shape[0])
        np.matmul(left, right.T, out=out)
        return out

    @staticmethod
    def _pairs(t: Any, mask: np.ndarray) -> Pairs:
        flat = np.flatnonzero(mask)
        r, c = np.divmod(flat, t.shape[1])
        return r, c, t.ravel()[flat].astype(np.float64)

    def nonzero_le(self, t: Any, thr: float) -> Pairs:
        return self._pairs(t, t <= np.float32(thr))

    def nonzero_lt_rows(self, t: Any, thr_rows: np.ndarray) -> Pairs:
        return self._pairs(t, t < thr_rows.astype(np.float32)[:, None])

    def nonzero_lt_rows_or_cols(self, t: Any, thr_rows: np.ndarray, thr_cols: np.ndarray) -> Pairs:
        mask = t < thr_rows.astype(np.float32)[:, None]
        mask |= t < thr_cols.astype(np.float32)[None, :]
        return self._pairs(t, mask)

    def topk_rows(self, t: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k < t.shape[1]:
            idx = np.argpartition(t, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(t.shape[1]), t.shape).copy()
        vals = np.take_along_axis(t, idx, axis=1).astype(np.float64)
        return vals, idx.astype(np.int64)

    def rowmin_minus_cols(self, t: Any, cols: np.ndarray, scratch: Any) -> np.ndarray:
        tmp = scratch[: t.size].reshape(t.shape)
        np.subtract(t, cols.astype(np.float32)[None, :], out=tmp)
        return tmp.min(axis=1).astype(np.float64)

    def pairs_below_outer(self, t: Any, cols: np.ndarray, rows: np.ndarray, scratch: Any) -> Pairs:
        """Entries with ``t - cols_j <= rows_i``, and their values ``t``."""
        tmp = scratch[: t.size].reshape(t.shape)
        np.subtract(t, cols.astype(np.float32)[None, :], out=tmp)
        return self._pairs(t, tmp <= rows.astype(np.float32)[:, None])


class TorchOps:
    """GPU backend: torch tensors on ``device``; run it inside :func:`strict_matmul`."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
        if self.device.type in available and not available[self.device.type]():
            raise DifflensError(f"Device {device!r} requested but {self.device.type} is not available.",
                                "Use --device cpu.")

    def put(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def empty(self, n: int) -> Any:
        return self.torch.empty(n, dtype=self.torch.float32, device=self.device)

    def tile(self, buf: Any, left: Any, right: Any) -> Any:
        out = buf[: left.shape[0] * right.shape[0]].view(left.shape[0], right.shape[0])
        self.torch.mm(left, right.T, out=out)
        return out

    def _pairs(self, t: Any, mask: Any) -> Pairs:
        r, c = self.torch.nonzero(mask, as_tuple=True)
        v = t[r, c].double()
        return r.cpu().numpy(), c.cpu().numpy(), v.cpu().numpy()

    def nonzero_le(self, t: Any, thr: float) -> Pairs:
        return self._pairs(t, t <= float(np.float32(thr)))

    def nonzero_lt_rows(self, t: Any, thr_rows: np.ndarray) -> Pairs:
        return self._pairs(t, t < self.put(thr_rows.astype(np.float32))[:, None])

    def nonzero_lt_rows_or_cols(self, t: Any, thr_rows: np.ndarray, thr_cols: np.ndarray) -> Pairs:
        mask = t < self.put(thr_rows.astype(np.float32))[:, None]
        mask |= t < self.put(thr_cols.astype(np.float32))[None, :]
        return self._pairs(t, mask)

    def topk_rows(self, t: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        v, i = self.torch.topk(t, min(k, t.shape[1]), dim=1, largest=False)
        return v.double().cpu().numpy(), i.cpu().numpy()

    def rowmin_minus_cols(self, t: Any, cols: np.ndarray, scratch: Any) -> np.ndarray:
        tmp = scratch[: t.numel()].view(t.shape)
        self.torch.sub(t, self.put(cols.astype(np.float32))[None, :], out=tmp)
        return tmp.amin(dim=1).double().cpu().numpy()

    def pairs_below_outer(self, t: Any, cols: np.ndarray, rows: np.ndarray, scratch: Any) -> Pairs:
        tmp = scratch[: t.numel()].view(t.shape)
        self.torch.sub(t, self.put(cols.astype(np.float32))[None, :], out=tmp)
        return self._pairs(t, tmp <= self.put(rows.astype(np.float32))[:, None])


Ops = NumpyOps | TorchOps


def ops_for(device: str) -> Ops:
    """The backend for ``device``: numpy on ``"cpu"``, torch on ``"cuda"``, ``"cuda:N"`` and ``"mps"``."""
    dev = str(device)
    if dev == "cpu":
        return NumpyOps()
    if dev.startswith(("cuda", "mps")):
        return TorchOps(dev)
    raise DifflensError(f"Unknown device {device!r} for k-NN metrics.", "Use 'cpu', 'cuda' or 'cuda:N'.")


@contextlib.contextmanager
def strict_matmul(ops: Ops) -> Iterator[None]:
    """Full-precision float32 products for the torch backend (:func:`difflens.numerics.strict_float32`,
    no autograd); nothing to do (and torch not imported) for numpy."""
    if not isinstance(ops, TorchOps):
        yield
        return
    from difflens.numerics import strict_float32

    with strict_float32(), ops.torch.inference_mode():
        yield


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def for_each(ops: Ops, items: Sequence[Any], fn: Callable[[Any], None]) -> None:
    """``fn(item)`` for every item; on the CPU backend in one worker thread per core, each with a
    single-threaded BLAS. Tile-level parallelism keeps both cores busy on an idle machine like a
    2-thread BLAS does, and degrades gracefully on a busy one, where a multi-threaded GEMM waits at every
    synchronization for its descheduled threads (measured 2x slower than 1 thread on the shared box)."""
    workers = min(cpu_count(), len(items)) if isinstance(ops, NumpyOps) else 1
    if workers <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    from difflens.metrics.fid import blas_single_thread

    with blas_single_thread(), ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, items):
            pass
