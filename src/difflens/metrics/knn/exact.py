"""Feature sets, exact distances and the float32 error bound of the k-NN engine (the argument is in the
package docstring, :mod:`difflens.metrics.knn`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from difflens.errors import DifflensError

U32 = 2.0 ** -24      # unit roundoff of float32
EXACT_CHUNK = 128     # pairs per float64 chunk in exact recomputation (cache-sized)


def gamma(n: int) -> float:
    """``gamma_n = n u / (1 - n u)``: the worst relative error of an n-term float32 dot product."""
    return n * U32 / (1.0 - n * U32)


@dataclass
class FeatureSet:
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


def prepare(feats: Any, name: str) -> FeatureSet:
    """Check a (N, D) array of real numbers and build its :class:`FeatureSet`."""
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
    return FeatureSet(src, x32, sq, norm_max, x32 is not src)


def prepare_pair(real: Any, fake: Any) -> tuple[FeatureSet, FeatureSet]:
    """Both sets, checked for a common dimension and at least one sample each."""
    real_fs = prepare(real, "Real")
    fake_fs = prepare(fake, "Fake")
    if real_fs.dim != fake_fs.dim:
        raise DifflensError(
            f"Feature dimension mismatch: real D={real_fs.dim}, fake D={fake_fs.dim}.",
            "Extract both sets with the same extractor and layer.")
    if real_fs.n == 0 or fake_fs.n == 0:
        raise DifflensError(f"k-NN metrics need samples in both sets (real {real_fs.n}, fake {fake_fs.n}).",
                            "Add images.")
    return real_fs, fake_fs


def exact_d2(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Exact squared distances ``sum((a[ia] - b[ib])^2)`` in float64 (symmetric; 0 for equal rows)."""
    out = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), EXACT_CHUNK):
        diff = np.subtract(a[ia[s:s + EXACT_CHUNK]], b[ib[s:s + EXACT_CHUNK]], dtype=np.float64)
        out[s:s + EXACT_CHUNK] = np.einsum("ij,ij->i", diff, diff)
    return out


def error_bound(a: FeatureSet, b: FeatureSet, offset_max: float = 0.0) -> float:
    """Rigorous bound on |float32 tile value - exact value| for tiles of a x b (see the package docstring)."""
    mag = 2 * a.norm_max * b.norm_max + a.norm_max ** 2 + b.norm_max ** 2 + 2 * abs(offset_max)
    out = 1.25 * (gamma(a.dim + 2) + 8 * U32) * mag
    if a.rounded or b.rounded:  # float32 rounding of float64 input moves squared distances by at most this
        out += 2.5 * U32 * (a.norm_max + b.norm_max) ** 2
    return out + 1e-300


def blocks(n: int, size: int, rows: range | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` blocks of ``size`` covering ``rows`` (default ``range(n)``)."""
    lo, hi = (0, n) if rows is None else (rows.start, rows.stop)
    return [(s, min(s + size, hi)) for s in range(lo, hi, size)]


def check_block(block_size: int) -> int:
    block = int(block_size)
    if block < 1:
        raise DifflensError(f"block_size must be positive, got {block_size}.", None)
    return block
