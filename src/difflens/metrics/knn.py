"""Exact k-NN manifold metrics: precision/recall (Kynkaanniemi et al. 2019) and density/coverage
(Naeem et al. 2020), computed tile by tile: memory O(block^2) per tile, never N x N.

Definitions (radius r_k(x) = distance from x to its k-th nearest neighbour in its own set, self excluded,
taken as the (k+1)-th smallest distance counting the self-distance 0 -- what torch-fidelity's
``kthvalue(k + 1)`` and prdc's ``get_kth_value(k + 1)`` do -- so duplicates count as neighbours at 0):

- precision (k=3) = (1/M) sum_j 1[ exists i: d(f_j, r_i) <= r_3(r_i) ]
- recall    (k=3) = (1/N) sum_i 1[ exists j: d(r_i, f_j) <= r_3(f_j) ]
- density   (k=5) = 1/(k M) sum_j sum_i 1[ d(f_j, r_i) < r_5(r_i) ]
- coverage  (k=5) = (1/N) sum_i 1[ min_j d(r_i, f_j) < r_5(r_i) ]

Exactness. Every comparison is decided on the exact distance ``sqrt(sum((a - b)^2))`` evaluated in float64
from the input values (exactly 0 for duplicates). Speed comes from float32 matrix products: a tile of
squared distances ``||a||^2 + ||b||^2 - 2 a.b`` is one float32 GEMM of augmented vectors
``[-2a, 1, ||a||^2 - offset] . [b, ||b||^2, 1]``, whose error has the rigorous bound
``tol = 1.25 (gamma_{D+2} + 8u) (2 max|a| max|b| + max||a||^2 + max||b||^2 + 2 max offset)``
(``u = 2^-24``, ``gamma_n = n u / (1 - n u)``: the worst case of any summation order, so it holds for every
BLAS and for cuBLAS with TF32 off). Comparisons farther than ``tol`` from their threshold are decided by
the tile; the rest (typically a few per thousand rows) are recomputed in float64. The results are
therefore those of exact arithmetic: independent of block size, device and BLAS, and equal to
torch-fidelity's ``prc`` and prdc's ``compute_prdc`` wherever their own float32 rounding does not flip a
near-tie (they disagree with each other there: torch-fidelity compares float32 ``cdist`` values, prdc
float64 distances rounded to float32).

Algorithm and cost. Radii: the upper triangle of tiles of each set (half the flops of an N x N product);
diagonal tiles first seed every row's list of the k+1+slack smallest values, then each off-diagonal tile
feeds its rows and its columns, keeping only entries below the row's current list maximum (a sparse
filter: a few entries per row and tile). The exact k-th value is certified from the list by a gap test
(the window of list entries within 2 tol of each other around position k+1 is recomputed exactly).
Cross pass: one real x fake product; density, coverage and precision come from the sparse set of pairs
within the real radius (+tol), recall from a row-wise minimum. Flops: ``2 (D+2) (N^2/2 + M^2/2 + N M)``.

Backends: numpy (OpenBLAS sgemm) on ``device="cpu"`` -- torch is not imported, which keeps the peak
memory small; torch on ``"cuda"``/``"cuda:N"``/``"mps"`` (TF32 disabled inside the computation).

Bootstrap (:func:`prdc_bootstrap`): the metrics of B resamples of the fake set come from the same single
pass, each equal to ``prdc(real, fake[idx_b])``. A resample with replacement holds duplicates, at distance
0 from each other, so a point drawn more than k times has k-NN radius 0; that is a property of
resampling, accepted as is.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from difflens.errors import DifflensError

_U32 = 2.0 ** -24
_SLACK = 8            # extra neighbours kept per row beyond k+1, for the certification gap test
_EXACT_CHUNK = 128    # pairs per float64 chunk in exact recomputation (cache-sized)
ALL_METRICS = ("precision", "recall", "density", "coverage")


def _gamma(n: int) -> float:
    return n * _U32 / (1.0 - n * _U32)


# ----------------------------------------------------------------------------------------------------
# backends: a float32 tile = A_aug @ B_aug^T, and a few reductions of it, returned as numpy arrays
# ----------------------------------------------------------------------------------------------------

class _NumpyOps:
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
    def _pairs(t: Any, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = np.flatnonzero(mask)
        r, c = np.divmod(flat, t.shape[1])
        return r, c, t.ravel()[flat].astype(np.float64)

    def nonzero_le(self, t: Any, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs(t, t <= np.float32(thr))

    def nonzero_lt_rows(self, t: Any, thr_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs(t, t < thr_rows.astype(np.float32)[:, None])

    def nonzero_lt_rows_or_cols(self, t: Any, thr_rows: np.ndarray, thr_cols: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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

    def pairs_below_outer(self, t: Any, cols: np.ndarray, rows: np.ndarray, scratch: Any
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries with ``t - cols_j <= rows_i``, and their values ``t``."""
        tmp = scratch[: t.size].reshape(t.shape)
        np.subtract(t, cols.astype(np.float32)[None, :], out=tmp)
        return self._pairs(t, tmp <= rows.astype(np.float32)[:, None])


class _TorchOps:
    """GPU backend: torch tensors on ``device``; TF32 is switched off by :func:`_fp32_matmul`."""

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

    def _pairs(self, t: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, c = self.torch.nonzero(mask, as_tuple=True)
        v = t[r, c].double()
        return r.cpu().numpy(), c.cpu().numpy(), v.cpu().numpy()

    def nonzero_le(self, t: Any, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs(t, t <= float(np.float32(thr)))

    def nonzero_lt_rows(self, t: Any, thr_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs(t, t < self.put(thr_rows.astype(np.float32))[:, None])

    def nonzero_lt_rows_or_cols(self, t: Any, thr_rows: np.ndarray, thr_cols: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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

    def pairs_below_outer(self, t: Any, cols: np.ndarray, rows: np.ndarray, scratch: Any
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tmp = scratch[: t.numel()].view(t.shape)
        self.torch.sub(t, self.put(cols.astype(np.float32))[None, :], out=tmp)
        return self._pairs(t, tmp <= self.put(rows.astype(np.float32))[:, None])


def _ops(device: str) -> Any:
    dev = str(device)
    if dev == "cpu":
        return _NumpyOps()
    if dev.startswith(("cuda", "mps")):
        return _TorchOps(dev)
    raise DifflensError(f"Unknown device {device!r} for k-NN metrics.", "Use 'cpu', 'cuda' or 'cuda:N'.")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _for_each(ops: Any, items: Sequence[Any], fn: Callable[[Any], None]) -> None:
    """``fn(item)`` for every item; on the CPU backend in one worker thread per core, each with a
    single-threaded BLAS. Tile-level parallelism keeps both cores busy on an idle machine like a
    2-thread BLAS does, and degrades gracefully on a busy one, where a multi-threaded GEMM waits at every
    synchronization for its descheduled threads (measured 2x slower than 1 thread on the shared box)."""
    workers = min(_cpu_count(), len(items)) if isinstance(ops, _NumpyOps) else 1
    if workers <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    from difflens.metrics.fid import blas_single_thread

    with blas_single_thread(), ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, items):
            pass


@contextlib.contextmanager
def _fp32_matmul(ops: Any) -> Iterator[None]:
    """Full-precision fp32 matmul (no TF32 / reduced-precision shortcuts) inside the block, restored after."""
    if not isinstance(ops, _TorchOps):
        yield
        return
    torch = ops.torch
    old = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_float32_matmul_precision(old)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


# ----------------------------------------------------------------------------------------------------
# feature sets, exact distances, error bound
# ----------------------------------------------------------------------------------------------------

@dataclass
class _FeatureSet:
    """Features as given (``src``: distances are exact for these values) and their float32 form."""

    src: np.ndarray          # float32 or float64 (N, D)
    x32: np.ndarray          # float32 (N, D) (``src`` itself when it is float32)
    sq: np.ndarray           # float64 (N,): exact squared norms of ``x32``
    norm_max: float          # max ||x32_i||, with headroom
    rounded: bool            # True when ``x32`` is a float32 rounding of float64 input

    @property
    def n(self) -> int:
        return int(self.src.shape[0])

    @property
    def dim(self) -> int:
        return int(self.src.shape[1])

    def left(self, rows: Any, offset: np.ndarray | None = None) -> np.ndarray:
        """``[-2 x, 1, ||x||^2 - offset]`` for ``rows`` (a slice or index array), float32."""
        x = self.x32[rows]
        out = np.empty((x.shape[0], x.shape[1] + 2), dtype=np.float32)
        np.multiply(x, -2.0, out=out[:, :-2])
        out[:, -2] = 1.0
        sq = self.sq[rows]
        out[:, -1] = sq if offset is None else sq - offset
        return out

    def right(self, rows: Any = slice(None)) -> np.ndarray:
        """``[x, ||x||^2, 1]`` for ``rows``, float32."""
        x = self.x32[rows]
        out = np.empty((x.shape[0], x.shape[1] + 2), dtype=np.float32)
        out[:, :-2] = x
        out[:, -2] = self.sq[rows]
        out[:, -1] = 1.0
        return out


def _prepare(feats: Any, name: str) -> _FeatureSet:
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise DifflensError(f"{name} features must be a 2-D (N, D) array, got shape {arr.shape}.", None)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DifflensError(f"{name} features must be real numbers, got dtype {arr.dtype}.", None)
    if arr.dtype == np.float32:
        src = np.ascontiguousarray(arr)
        x32 = src
    else:
        src = np.ascontiguousarray(arr, dtype=np.float64)
        x32 = src.astype(np.float32)
    sq = np.einsum("ij,ij->i", x32, x32, dtype=np.float64)   # products and sums in float64
    if not np.all(np.isfinite(sq)):
        raise DifflensError(f"{name} features contain NaN or infinite values (or overflow float32).",
                            "Check the extractor input.")
    norm_max = float(np.sqrt(sq.max())) * (1 + 1e-6) if src.shape[0] else 0.0
    return _FeatureSet(src, x32, sq, norm_max, x32 is not src)


def _prepare_pair(real: Any, fake: Any) -> tuple[_FeatureSet, _FeatureSet]:
    real_fs = _prepare(real, "Real")
    fake_fs = _prepare(fake, "Fake")
    if real_fs.dim != fake_fs.dim:
        raise DifflensError(
            f"Feature dimension mismatch: real D={real_fs.dim}, fake D={fake_fs.dim}.",
            "Extract both sets with the same extractor and layer.")
    if real_fs.n == 0 or fake_fs.n == 0:
        raise DifflensError(f"k-NN metrics need samples in both sets (real {real_fs.n}, fake {fake_fs.n}).",
                            "Add images.")
    return real_fs, fake_fs


def _exact_d2(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Exact squared distances ``sum((a[ia] - b[ib])^2)`` in float64 (symmetric; 0 for equal rows)."""
    out = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), _EXACT_CHUNK):
        diff = np.subtract(a[ia[s:s + _EXACT_CHUNK]], b[ib[s:s + _EXACT_CHUNK]], dtype=np.float64)
        out[s:s + _EXACT_CHUNK] = np.einsum("ij,ij->i", diff, diff)
    return out


def _tol(a: _FeatureSet, b: _FeatureSet, offset_max: float = 0.0) -> float:
    """Rigorous bound on |float32 tile value - exact value| for tiles of a x b (see module docstring)."""
    mag = 2 * a.norm_max * b.norm_max + a.norm_max ** 2 + b.norm_max ** 2 + 2 * abs(offset_max)
    tol = 1.25 * (_gamma(a.dim + 2) + 8 * _U32) * mag
    if a.rounded or b.rounded:  # float32 rounding of float64 input moves squared distances by at most this
        tol += 2.5 * _U32 * (a.norm_max + b.norm_max) ** 2
    return tol + 1e-300


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _check_block(block_size: int) -> int:
    block = int(block_size)
    if block < 1:
        raise DifflensError(f"block_size must be positive, got {block_size}.", None)
    return block


# ----------------------------------------------------------------------------------------------------
# k nearest neighbours within one set
# ----------------------------------------------------------------------------------------------------

class _TopList:
    """Per row, the ``kk`` smallest (approximate value, index) pairs seen so far, sorted ascending."""

    def __init__(self, n: int, kk: int) -> None:
        self.kk = kk
        self.v = np.full((n, kk), np.inf)
        self.i = np.full((n, kk), -1, dtype=np.int64)

    def merge(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Insert candidates (global row, global column, value); each pair must be new to its row."""
        if len(rows) == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows, cols, vals = rows[order], cols[order], vals[order]
        urows, starts, counts = np.unique(rows, return_index=True, return_counts=True)
        kk = self.kk
        width = kk + int(counts.max())
        dv = np.full((len(urows), width), np.inf)
        di = np.full((len(urows), width), -1, dtype=np.int64)
        dv[:, :kk] = self.v[urows]
        di[:, :kk] = self.i[urows]
        ur = np.repeat(np.arange(len(urows)), counts)
        pos = kk + np.arange(len(rows)) - np.repeat(starts, counts)
        dv[ur, pos] = vals
        di[ur, pos] = cols
        o = np.argsort(dv, axis=1, kind="stable")[:, :kk]
        self.v[urows] = np.take_along_axis(dv, o, axis=1)
        self.i[urows] = np.take_along_axis(di, o, axis=1)


def _approx_self_lists(ops: Any, fs: _FeatureSet, kk: int, block: int) -> _TopList:
    """Approximate (float32 tile values) ``kk`` smallest squared distances of every row, self included.

    Row strips of ``block // 2`` rows: the diagonal squares first (they fill every row's list), then the
    part of each strip right of its square in tiles of ``block // 2 x 2 block`` (the same memory as a
    ``block x block`` tile); the wasted lower half of the diagonal squares is ``N block / 4`` entries.
    """
    n = fs.n
    top = _TopList(n, kk)
    half = max(1, block // 2)
    strips = _blocks(n, half)
    right = ops.put(fs.right())
    lock = threading.Lock()

    def diagonal(b: tuple[int, int]) -> None:
        i0, i1 = b
        t = ops.tile(ops.empty((i1 - i0) ** 2), ops.put(fs.left(slice(i0, i1))), right[i0:i1])
        v, c = ops.topk_rows(t, kk)
        r = np.repeat(np.arange(i0, i1), v.shape[1])
        with lock:
            top.merge(r, c.ravel() + i0, v.ravel())

    def strip(b: tuple[int, int]) -> None:
        i0, i1 = b
        left = ops.put(fs.left(slice(i0, i1)))
        width = max(1, (block * block) // max(1, i1 - i0))
        buf = ops.empty((i1 - i0) * width)
        for j0 in range(i1, n, width):
            j1 = min(j0 + width, n)
            t = ops.tile(buf, left, right[j0:j1])
            # rows i0:i1 take the entries below their current list maximum, and columns j0:j1 (rows of
            # the transposed tile) likewise: one sparse selection, then split. A threshold read while
            # another worker lowers it is still an upper bound: the selection is a superset, no loss.
            th_r, th_c = top.v[i0:i1, -1].copy(), top.v[j0:j1, -1].copy()
            r, c, v = ops.nonzero_lt_rows_or_cols(t, th_r, th_c)
            sel_r = v < th_r[r]
            sel_c = v < th_c[c]
            with lock:
                top.merge(r[sel_r] + i0, c[sel_r] + j0, v[sel_r])
                top.merge(c[sel_c] + j0, r[sel_c] + i0, v[sel_c])

    _for_each(ops, strips, diagonal)
    _for_each(ops, strips[:-1], strip)
    return top


def _exact_rows_smallest(ops: Any, fs: _FeatureSet, rows: np.ndarray, q: int, tol: float, block: int
                         ) -> np.ndarray:
    """Exact q smallest squared distances of ``rows`` against the whole set (fallback path), (len, q)."""
    out = np.empty((len(rows), q), dtype=np.float64)
    chunk = max(1, min(block, (1 << 22) // max(fs.n, 1)))
    right = ops.put(fs.right())
    buf = ops.empty(chunk * fs.n)
    for s in range(0, len(rows), chunk):
        rr = rows[s:s + chunk]
        t = ops.tile(buf, ops.put(fs.left(rr)), right)
        v, _ = ops.topk_rows(t, q)
        vq = np.sort(v, axis=1)[:, q - 1]
        ri, cj, _ = ops.nonzero_lt_rows(t, vq + 2 * tol + 2 * _U32 * np.abs(vq))
        e = _exact_d2(fs.src, rr[ri], fs.src, cj)
        for local in range(len(rr)):
            ev = np.sort(e[ri == local])
            out[s + local] = ev[:q]
    return out


def _knn_sq_radii(ops: Any, fs: _FeatureSet, ks: Sequence[int], block: int) -> dict[int, np.ndarray]:
    """Exact squared k-th neighbour distances (float64) for every k in ``ks``, from one pass."""
    ks = sorted({int(k) for k in ks})
    q_max = ks[-1] + 1
    n = fs.n
    if n < q_max:
        raise DifflensError(
            f"k-NN with k={ks[-1]} needs at least {q_max} samples in a set, got {n}.",
            "Add images or lower k.")
    kk = min(n, q_max + _SLACK)
    tol = _tol(fs, fs)
    top = _approx_self_lists(ops, fs, kk, block)
    vals, idx = top.v, top.i
    linked = np.diff(vals, axis=1) <= 2 * tol          # (n, kk-1): entries c and c+1 not separated
    out: dict[int, np.ndarray] = {}
    fallback: set[int] = set()
    rows = np.arange(n)
    for k in ks:
        p = k  # 0-based position of the (k+1)-th smallest
        lo = np.full(n, p)
        for c in range(p, 0, -1):
            step = (lo == c) & linked[:, c - 1]
            lo[step] = c - 1
        hi = np.full(n, p)
        for c in range(p, kk - 1):
            step = (hi == c) & linked[:, c]
            hi[step] = c + 1
        # certified when the window ends before the list does (or the list holds the whole set)
        ok = np.full(n, True) if kk == n else hi < kk - 1
        fallback.update(np.nonzero(~ok)[0].tolist())
        width = hi - lo + 1
        sel = rows[ok]
        wsel = width[ok]
        r_pairs = np.repeat(sel, wsel)
        offs = np.arange(len(r_pairs)) - np.repeat(np.cumsum(wsel) - wsel, wsel)
        c_pos = lo[r_pairs] + offs
        e = _exact_d2(fs.src, r_pairs, fs.src, idx[r_pairs, c_pos])
        order = np.lexsort((e, r_pairs))
        starts = np.cumsum(wsel) - wsel
        radius = np.empty(n)
        radius[sel] = e[order][starts + (p - lo[sel])]
        out[k] = radius
    if fallback:
        bad = np.array(sorted(fallback), dtype=np.int64)
        exact = _exact_rows_smallest(ops, fs, bad, q_max, tol, block)
        for k in ks:
            out[k][bad] = exact[:, k]
    return out


def knn_radii_many(feats: np.ndarray, ks: Sequence[int], block_size: int = 1024, device: str = "cpu"
                   ) -> dict[int, np.ndarray]:
    """Exact k-th neighbour distances (self excluded) for several k from one pass: ``{k: (N,) float64}``."""
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise DifflensError(f"k must be at least 1, got {ks}.", None)
    block = _check_block(block_size)
    ops = _ops(device)
    fs = _prepare(feats, "Input")
    with _fp32_matmul(ops):
        sq = _knn_sq_radii(ops, fs, ks, block)
    return {k: np.sqrt(v) for k, v in sq.items()}


def knn_radii(feats: np.ndarray, k: int, block_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Exact distance from each row to its k-th nearest neighbour in the same set, self excluded
    (the (k+1)-th smallest distance counting the self-distance 0), float64 (N,)."""
    return knn_radii_many(feats, [k], block_size, device)[int(k)]


# ----------------------------------------------------------------------------------------------------
# real x fake pass
# ----------------------------------------------------------------------------------------------------

def _candidate_pairs(ops: Any, a: _FeatureSet, rows: np.ndarray, b_right: Any, b_n: int,
                     col_thr: np.ndarray, tol: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (position in ``rows``, column of b) whose float32 squared distance is within ``tol`` above
    ``col_thr``: a superset of the pairs whose exact squared distance is <= ``col_thr``.
    ``b_right`` is b's augmented matrix already on the device."""
    out_r, out_c = [], []
    chunk = max(1, min(block, 1024))
    width = max(chunk, 1024)
    buf = ops.empty(chunk * width)
    scratch = ops.empty(chunk * width)
    for s in range(0, len(rows), chunk):
        rr = rows[s:s + chunk]
        left = ops.put(a.left(rr))
        lim = np.full(len(rr), tol)
        for j0, j1 in _blocks(b_n, width):
            t = ops.tile(buf, left, b_right[j0:j1])
            ri, cj, _ = ops.pairs_below_outer(t, col_thr[j0:j1], lim, scratch)
            out_r.append(ri + s)
            out_c.append(cj + j0)
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_r), np.concatenate(out_c)


@dataclass
class _CrossResult:
    """Per-item outcome of the real x fake pass (exact)."""

    tol: float
    precise: np.ndarray | None = None        # (M,) fake j inside some real k_pr-ball
    dens_count: np.ndarray | None = None     # (M,) number of real k_dc-balls holding fake j (strict)
    covered: np.ndarray | None = None        # (N,) real i has a fake inside its k_dc-ball (strict)
    cov_pairs: tuple[np.ndarray, np.ndarray] | None = None   # all (i, j) with d_ij < r_dc(i)
    recalled: np.ndarray | None = None       # (N,) real i inside some fake k_pr-ball
    rec_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (i, j, approx d2) candidates


def _cross(ops: Any, real: _FeatureSet, fake: _FeatureSet, rr_pr: np.ndarray | None,
           rf_pr: np.ndarray | None, rr_dc: np.ndarray | None, block: int,
           rec_max: np.ndarray | None = None, keep_pairs: bool = False) -> _CrossResult:
    """One real x fake pass deciding every comparison exactly.

    ``rr_pr``/``rr_dc``: real radii (precision; density/coverage), ``rf_pr``: fake radii (recall).
    With ``rec_max`` (per-fake largest radius over bootstrap resamples) recall is not decided here;
    instead every pair within ``rec_max`` (+tol) is returned in ``rec_pairs`` with its float32 value.
    ``keep_pairs`` also returns the pairs inside the density/coverage balls.
    """
    n, m = real.n, fake.n
    want_p, want_dc = rr_pr is not None, rr_dc is not None
    want_r = rf_pr is not None or rec_max is not None
    p2 = None if rr_pr is None else rr_pr ** 2     # squared thresholds, for screening only
    q2 = None if rr_dc is None else rr_dc ** 2
    r2 = None if not want_r else (rec_max if rec_max is not None else rf_pr) ** 2
    # tile = d2 - base_i, base_i the largest wanted real threshold: every pair that can pass a real
    # threshold has tile value <= tol, so one sparse selection serves density, coverage and precision
    base = np.maximum(q2 if want_dc else 0.0, p2 if want_p else 0.0) * np.ones(n)
    thr_max = max([float(x.max()) for x in (p2, r2, q2) if x is not None] + [0.0])
    tol = _tol(real, fake, offset_max=2 * thr_max) + 1e-12 * thr_max
    shift_p = None if not want_p else base - p2                  # d2 - P_i = tile + shift_p_i
    shift_dc = None if not want_dc else base - q2                # d2 - Q_i = tile + shift_dc_i

    res = _CrossResult(tol)
    precise = np.zeros(m, dtype=bool)
    dens = np.zeros(m, dtype=np.int64)
    covered = np.zeros(n, dtype=bool)
    unsure_dc: list[tuple[np.ndarray, np.ndarray]] = []
    unsure_p: list[tuple[np.ndarray, np.ndarray]] = []
    sure_dc: list[tuple[np.ndarray, np.ndarray]] = []
    rec_found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rec_margin = np.full(n, np.inf)

    right = ops.put(fake.right())
    lock = threading.Lock()

    def row_block(b: tuple[int, int]) -> None:   # rows i0:i1 of real against every fake block
        i0, i1 = b
        buf = ops.empty(block * block)
        scratch = ops.empty(block * block) if want_r else None
        left = ops.put(real.left(slice(i0, i1), offset=base[i0:i1]))
        for j0, j1 in _blocks(m, block):
            t = ops.tile(buf, left, right[j0:j1])
            if want_dc or want_p:
                r, c, v = ops.nonzero_le(t, tol)     # every pair with d2 <= base_i lies in here
                rg, cg = r + i0, c + j0
                if want_dc:
                    vd = v + shift_dc[rg]
                    sure = vd < -tol
                    mid = np.abs(vd) <= tol
                    with lock:
                        dens[j0:j1] += np.bincount(c[sure], minlength=j1 - j0)
                        covered[rg[sure]] = True
                        if keep_pairs:
                            sure_dc.append((rg[sure], cg[sure]))
                        unsure_dc.append((rg[mid], cg[mid]))
                if want_p:
                    vp = v + shift_p[rg]
                    mid = np.abs(vp) <= tol
                    with lock:
                        precise[cg[vp < -tol]] = True
                        unsure_p.append((rg[mid], cg[mid]))
            if want_r and rec_max is None:             # rows i0:i1 belong to this worker alone
                mn = ops.rowmin_minus_cols(t, r2[j0:j1], scratch) + base[i0:i1]
                np.minimum(rec_margin[i0:i1], mn, out=rec_margin[i0:i1])
            elif want_r:
                r, c, v = ops.pairs_below_outer(t, r2[j0:j1], tol - base[i0:i1], scratch)
                with lock:
                    rec_found.append((r + i0, c + j0, v + base[r + i0]))

    _for_each(ops, _blocks(n, block), row_block)

    def cat(parts: list[tuple[np.ndarray, ...]], k: int) -> np.ndarray:
        return np.concatenate([u[k] for u in parts]) if parts else np.zeros(0, np.int64)

    if want_dc:
        ri, cj = cat(unsure_dc, 0), cat(unsure_dc, 1)
        inside = np.sqrt(_exact_d2(real.src, ri, fake.src, cj)) < rr_dc[ri]
        np.add.at(dens, cj[inside], 1)
        covered[ri[inside]] = True
        res.dens_count, res.covered = dens, covered
        if keep_pairs:
            res.cov_pairs = (np.concatenate([cat(sure_dc, 0), ri[inside]]),
                             np.concatenate([cat(sure_dc, 1), cj[inside]]))
    if want_p:
        ri, cj = cat(unsure_p, 0), cat(unsure_p, 1)
        inside = np.sqrt(_exact_d2(real.src, ri, fake.src, cj)) <= rr_pr[ri]
        precise[cj[inside]] = True
        res.precise = precise
    if want_r and rec_max is None:
        recalled = rec_margin < -tol
        unsure = np.nonzero(np.abs(rec_margin) <= tol)[0]
        if len(unsure):
            ri, cj = _candidate_pairs(ops, real, unsure, right, m, r2, tol, block)
            hit = np.sqrt(_exact_d2(real.src, unsure[ri], fake.src, cj)) <= rf_pr[cj]
            recalled[unsure[np.unique(ri[hit])]] = True
        res.recalled = recalled
    elif want_r:
        res.rec_pairs = (cat(rec_found, 0), cat(rec_found, 1),
                         np.concatenate([u[2] for u in rec_found]) if rec_found else np.zeros(0))
    return res


def _summary(res: _CrossResult, n: int, m: int, k_dc: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if res.precise is not None:
        out["precision"] = float(np.count_nonzero(res.precise)) / m
    if res.recalled is not None:
        out["recall"] = float(np.count_nonzero(res.recalled)) / n
    if res.dens_count is not None:
        out["density"] = (1.0 / float(k_dc)) * (float(res.dens_count.sum()) / m)
        out["coverage"] = float(np.count_nonzero(res.covered)) / n
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5, block_size: int = 1024,
         device: str = "cpu", metrics: Sequence[str] = ALL_METRICS,
         real_radii: dict[int, np.ndarray] | None = None) -> dict[str, float]:
    """Exact precision/recall (k=``k_pr``, ``<=``) and density/coverage (k=``k_dc``, ``<``).

    ``real_radii`` maps k to precomputed real-set radii (from :func:`knn_radii` or
    :func:`knn_radii_many`), so that bootstrap resamples of the fake set do not recompute them.
    Returns the requested metrics as floats (exact ratios of counts).
    """
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown or not metrics:
        raise DifflensError(f"Unknown k-NN metrics: {', '.join(unknown) or '(none given)'}.",
                            f"Choose from {', '.join(ALL_METRICS)}.")
    k_pr, k_dc = int(k_pr), int(k_dc)
    if k_pr < 1 or k_dc < 1:
        raise DifflensError(f"k must be at least 1, got k_pr={k_pr}, k_dc={k_dc}.", None)
    block = _check_block(block_size)
    ops = _ops(device)
    want_p, want_r = "precision" in metrics, "recall" in metrics
    want_dc = "density" in metrics or "coverage" in metrics
    real_fs, fake_fs = _prepare_pair(real, fake)
    need_real = sorted({k for k, w in ((k_pr, want_p), (k_dc, want_dc)) if w})
    radii: dict[int, np.ndarray] = {}
    for k in need_real:
        if real_radii is not None and k in real_radii:
            r = np.asarray(real_radii[k], dtype=np.float64)
            if r.shape != (real_fs.n,):
                raise DifflensError(
                    f"Precomputed real radii for k={k} have shape {r.shape}, expected ({real_fs.n},).",
                    "Compute them with knn_radii on the same real features.")
            radii[k] = r
    checks = (("real", real_fs.n, max(need_real, default=0)), ("fake", fake_fs.n, k_pr if want_r else 0))
    for label, count, k in checks:
        if k and count < k + 1:
            raise DifflensError(
                f"k-NN metrics with k={k} need at least {k + 1} {label} samples, got {count}.",
                "Add images or lower k.")
    with _fp32_matmul(ops):
        missing = [k for k in need_real if k not in radii]
        if missing:
            for k, v in _knn_sq_radii(ops, real_fs, missing, block).items():
                radii[k] = np.sqrt(v)
        rf = np.sqrt(_knn_sq_radii(ops, fake_fs, [k_pr], block)[k_pr]) if want_r else None
        res = _cross(ops, real_fs, fake_fs, radii.get(k_pr) if want_p else None, rf,
                     radii.get(k_dc) if want_dc else None, block)
    summary = _summary(res, real_fs.n, fake_fs.n, k_dc)
    return {key: summary[key] for key in metrics}


# ----------------------------------------------------------------------------------------------------
# bootstrap of the fake set: all resamples from one pass
# ----------------------------------------------------------------------------------------------------

_BOOT_DEPTH = 24  # neighbours kept per fake point beyond k, to find its radius in any resample


def _exact_lists(ops: Any, fs: _FeatureSet, kk: int, block: int, counts: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's nearest points (self included) as far as the resamples ``counts`` need them: exact
    squared distances sorted ascending (ties by index; ``inf`` past the computed prefix), their indices,
    and the certified depth (the first ``depth`` entries are the true nearest points, in order)."""
    n = fs.n
    kk = min(kk, n)
    tol = _tol(fs, fs)
    top = _approx_self_lists(ops, fs, kk, block)
    v, idx = top.v, top.i
    rows = np.arange(n)
    self_mask = idx == rows[:, None]
    # how deep each row's list is needed: the position where any resample's count reaches k (in the
    # approximate order), then past every entry tied with it within 2 tol
    need = np.full(n, min(k + 1, kk))
    for c in counts:
        reach = np.cumsum(c[idx] - self_mask, axis=1) >= k
        pos = np.where(reach.any(axis=1), reach.argmax(axis=1), kk - 1)
        np.maximum(need, pos + 1, out=need)
    for c in range(1, kk):
        grow = (need == c) & (v[:, c] <= v[:, c - 1] + 2 * tol)
        need[grow] = c + 1
    r_pairs = np.repeat(rows, need)
    c_pos = np.arange(len(r_pairs)) - np.repeat(np.cumsum(need) - need, need)
    e = np.full((n, kk), np.inf)
    e[r_pairs, c_pos] = _exact_d2(fs.src, r_pairs, fs.src, idx[r_pairs, c_pos])
    o = np.argsort(idx, axis=1, kind="stable")             # ties in distance: by index
    e, idx = np.take_along_axis(e, o, axis=1), np.take_along_axis(idx, o, axis=1)
    o = np.argsort(e, axis=1, kind="stable")
    e, idx = np.take_along_axis(e, o, axis=1), np.take_along_axis(idx, o, axis=1)
    if kk == n:
        bound = np.where(need < kk, v[rows, np.minimum(need, kk - 1)] - tol, np.inf)
    else:  # everything not computed has a float32 value >= this, so an exact value >= it - tol
        bound = v[rows, np.minimum(need, kk - 1)] - tol
    depth = (e < bound[:, None]).sum(axis=1)
    return e, idx, depth


def _resample_sq_radii(fs: _FeatureSet, lists: tuple[np.ndarray, np.ndarray, np.ndarray],
                       counts: np.ndarray, k: int) -> np.ndarray:
    """Squared k-NN radius of every fake point in every resample (multiplicities ``counts``, (B, M)):
    the k-th smallest distance to the other positions of the resample, copies of itself counting 0.
    NaN where the point is absent from the resample."""
    e, idx, depth = lists
    m, kk = e.shape
    rows = np.arange(m)
    self_mask = idx == rows[:, None]
    in_prefix = np.arange(kk)[None, :] < depth[:, None]
    has_self = (self_mask & in_prefix).any(axis=1)
    out = np.full(counts.shape, np.nan)
    todo: dict[int, list[int]] = {}
    for b in range(counts.shape[0]):
        c = counts[b]
        cum = np.cumsum(c[idx] - self_mask, axis=1)
        reach = (cum >= k) & in_prefix
        pos = reach.argmax(axis=1)
        ok = reach[rows, pos] & has_self
        present = c > 0
        good = present & ok
        out[b, good] = e[good, pos[good]]
        for j in np.nonzero(present & ~ok)[0].tolist():
            todo.setdefault(j, []).append(b)
    for j, bs in todo.items():   # rare: the list is too short for this resample; use the whole row
        ej = _exact_d2(fs.src, np.full(m, j), fs.src, rows)
        o = np.lexsort((rows, ej))
        for b in bs:
            cum = np.cumsum(counts[b][o] - (o == j))
            out[b, j] = ej[o][int(np.argmax(cum >= k))]
    return out


def prdc_bootstrap(real: np.ndarray, fake: np.ndarray, counts: np.ndarray, k_pr: int = 3, k_dc: int = 5,
                   block_size: int = 1024, device: str = "cpu", metrics: Sequence[str] = ALL_METRICS,
                   real_radii: dict[int, np.ndarray] | None = None
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The k-NN metrics of ``fake`` and of every resample of it, from one pass.

    ``counts`` (B, M) holds the multiplicity of each fake point in each resample (rows of
    :func:`difflens.metrics.bootstrap.bootstrap_counts`). Returns ``(point values, {metric: (B,)})``; each
    resample's values equal ``prdc(real, fake[idx_b])`` exactly. How: precision and density are sums of
    per-fake-point quantities weighted by the multiplicities; coverage needs only the (sparse) pairs inside
    the real balls; recall needs each fake point's radius within the resample, read off its sorted exact
    neighbour list (copies of a point sit at distance 0), and the pairs within the largest such radius.
    Cost: one prdc pass plus O(B (M k + pairs)).
    """
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown or not metrics:
        raise DifflensError(f"Unknown k-NN metrics: {', '.join(unknown) or '(none given)'}.",
                            f"Choose from {', '.join(ALL_METRICS)}.")
    k_pr, k_dc = int(k_pr), int(k_dc)
    block = _check_block(block_size)
    ops = _ops(device)
    real_fs, fake_fs = _prepare_pair(real, fake)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != fake_fs.n or np.any(counts.sum(axis=1) != fake_fs.n):
        raise DifflensError(f"Bootstrap counts must be (B, {fake_fs.n}) multiplicities summing to "
                            f"{fake_fs.n} per row, got shape {counts.shape}.", None)
    want_p, want_r = "precision" in metrics, "recall" in metrics
    want_dc = "density" in metrics or "coverage" in metrics
    need_real = sorted({k for k, w in ((k_pr, want_p), (k_dc, want_dc)) if w})
    radii = {k: np.asarray(v, dtype=np.float64) for k, v in (real_radii or {}).items() if k in need_real}
    for k, r in radii.items():
        if r.shape != (real_fs.n,):
            raise DifflensError(
                f"Precomputed real radii for k={k} have shape {r.shape}, expected ({real_fs.n},).",
                "Compute them with knn_radii on the same real features.")
    if want_r and fake_fs.n < k_pr + 1:
        raise DifflensError(f"Recall with k={k_pr} needs at least {k_pr + 1} fake samples.", "Add images.")
    nb = counts.shape[0]
    with _fp32_matmul(ops):
        missing = [k for k in need_real if k not in radii]
        if missing:
            for k, v in _knn_sq_radii(ops, real_fs, missing, block).items():
                radii[k] = np.sqrt(v)
        rf = rb = None
        if want_r:
            lists = _exact_lists(ops, fake_fs, k_pr + 1 + _BOOT_DEPTH + _SLACK, block, counts, k_pr)
            rf = np.sqrt(_resample_sq_radii(fake_fs, lists, np.ones((1, fake_fs.n), np.int64), k_pr)[0])
            rb = np.sqrt(_resample_sq_radii(fake_fs, lists, counts, k_pr))
            rec_max = np.fmax(rf, np.nanmax(rb, axis=0, initial=0.0))
            rec_min = np.fmin(rf, np.nanmin(np.where(np.isnan(rb), np.inf, rb), axis=0))
        res = _cross(ops, real_fs, fake_fs, radii.get(k_pr) if want_p else None, None,
                     radii.get(k_dc) if want_dc else None, block,
                     rec_max=rec_max if want_r else None, keep_pairs=want_dc)
    n, m = real_fs.n, fake_fs.n
    point: dict[str, float] = {}
    boot: dict[str, np.ndarray] = {}
    present = counts > 0
    w = counts.astype(np.float64)
    if want_p:
        point["precision"] = float(np.count_nonzero(res.precise)) / m
        boot["precision"] = (w @ res.precise.astype(np.float64)) / m
    if want_dc:
        point["density"] = (1.0 / float(k_dc)) * (float(res.dens_count.sum()) / m)
        boot["density"] = (1.0 / float(k_dc)) * ((w @ res.dens_count.astype(np.float64)) / m)
        point["coverage"] = float(np.count_nonzero(res.covered)) / n
        pi, pj = res.cov_pairs
        cov = np.empty(nb)
        for b in range(nb):
            hit = np.zeros(n, dtype=bool)
            hit[pi[present[b, pj]]] = True
            cov[b] = float(np.count_nonzero(hit)) / n
        boot["coverage"] = cov
    if want_r:
        ri, cj, approx = res.rec_pairs
        always = approx < rec_min[cj] ** 2 - res.tol      # inside every resample's ball of j
        dist = np.full(len(ri), -np.inf)
        need = ~always
        dist[need] = np.sqrt(_exact_d2(real_fs.src, ri[need], fake_fs.src, cj[need]))
        hit = np.zeros(n, dtype=bool)
        hit[ri[dist <= rf[cj]]] = True
        point["recall"] = float(np.count_nonzero(hit)) / n
        rec = np.empty(nb)
        for b in range(nb):
            hit = np.zeros(n, dtype=bool)
            ok = present[b, cj] & (dist <= rb[b, cj])
            hit[ri[ok]] = True
            rec[b] = float(np.count_nonzero(hit)) / n
        boot["recall"] = rec
    return {key: point[key] for key in metrics}, {key: boot[key] for key in metrics}
