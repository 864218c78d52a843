"""Mergeable Gaussian statistics of feature sets (DESIGN.md 2.1) and their ``.npz`` files.

A feature set is summarised by its count ``n``, mean and centered second moment
``m2 = sum_i (x_i - mean)(x_i - mean)^T``, all in float64. Two summaries merge exactly with the
pairwise update of Chan, Golub & LeVeque (1979)::

    n = na + nb,  delta = mean_b - mean_a,
    mean = mean_a + delta * nb / n,
    m2 = m2_a + m2_b + delta delta^T * na * nb / n

so shards, batch sizes and batch orders give the same statistics as one pass (to float64 rounding).
The unbiased covariance is ``m2 / (n - 1)``, as in ``np.cov`` and every FID reference.

Files are ``.npz`` with ``mu`` and ``sigma`` (the pytorch-fid layout, so pytorch-fid and torch-fidelity
read them), ``n`` and ``fingerprint`` (a JSON string in a 0-d unicode array, readable without pickle),
plus optional extra arrays (features, say). A pytorch-fid file with only ``mu`` and ``sigma`` loads with
``n = -1`` (count unknown): such statistics give a covariance and an FID but cannot be merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difflens.errors import DifflensError

UNKNOWN_N = -1
_RESERVED_KEYS = ("mu", "sigma", "n", "fingerprint")
_CHUNK_ROWS = 4096  # rows converted to float64 at a time in from_features


def _as_features(feats: Any, name: str = "features") -> np.ndarray:
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise DifflensError(f"{name} must be a 2-D (N, D) array, got shape {arr.shape}.",
                            "Pass one feature vector per row.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DifflensError(f"{name} must hold real numbers, got dtype {arr.dtype}.",
                            "Pass float32 or float64 features.")
    return arr


@dataclass
class GaussianStats:
    """Count, mean and centered second moment of a feature set (float64).

    ``n == -1`` means the count is unknown (statistics loaded from a pytorch-fid file); ``m2`` then holds
    the covariance itself, :meth:`covariance` returns it unchanged, and merging is refused.
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> GaussianStats:
        """Statistics of zero samples in ``dim`` dimensions (the identity of :meth:`merge`)."""
        if int(dim) < 1:
            raise DifflensError(f"Feature dimension must be positive, got {dim}.", None)
        dim = int(dim)
        return cls(0, np.zeros(dim, dtype=np.float64), np.zeros((dim, dim), dtype=np.float64))

    @classmethod
    def from_features(cls, feats: np.ndarray) -> GaussianStats:
        """Statistics of an ``(N, D)`` feature array, accumulated in float64 chunks of rows."""
        arr = _as_features(feats)
        out = cls.empty(arr.shape[1])
        for start in range(0, arr.shape[0], _CHUNK_ROWS):
            out = out.merge(_chunk_stats(arr[start:start + _CHUNK_ROWS]))
        return out

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def known_n(self) -> bool:
        return self.n >= 0

    def update(self, feats: np.ndarray) -> GaussianStats:
        """Statistics of ``self`` plus the rows of ``feats`` (returns a new object; nothing is mutated)."""
        arr = _as_features(feats)
        if arr.shape[1] != self.dim:
            raise DifflensError(
                f"Feature dimension mismatch: statistics have D={self.dim}, the batch has D={arr.shape[1]}.",
                "Use features from the same extractor and layer.")
        return self.merge(GaussianStats.from_features(arr))

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Exact merge of two summaries (Chan et al. pairwise update)."""
        if self.dim != other.dim:
            raise DifflensError(
                f"Feature dimension mismatch: cannot merge statistics with D={self.dim} and D={other.dim}.",
                "Merge statistics of the same extractor and layer.")
        if not (self.known_n and other.known_n):
            raise DifflensError(
                "Cannot merge statistics whose sample count is unknown (a file with only mu and sigma).",
                "Recompute the statistics with difflens, which records n.")
        if other.n == 0:
            return GaussianStats(self.n, self.mean.copy(), self.m2.copy())
        if self.n == 0:
            return GaussianStats(other.n, other.mean.copy(), other.m2.copy())
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return GaussianStats(n, mean, m2)

    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``m2 / (n - 1)``; the stored sigma when the count is unknown."""
        if self.n == UNKNOWN_N:
            return self.m2
        if self.n < 2:
            raise DifflensError(
                f"A covariance needs at least 2 samples, these statistics have {self.n}.",
                "Use a set of at least 2 images (FID needs thousands to be meaningful).")
        return self.m2 / (self.n - 1)


def _chunk_stats(chunk: np.ndarray) -> GaussianStats:
    x = np.asarray(chunk, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise DifflensError("Features contain NaN or infinite values.",
                            "Check the extractor input (corrupt images, overflow in float16).")
    n = x.shape[0]
    if n == 0:
        return GaussianStats.empty(x.shape[1])
    mean = x.mean(axis=0)
    c = x - mean
    return GaussianStats(n, mean, c.T @ c)


def stats_from_mu_sigma(mu: Any, sigma: Any, n: int | None, name: str = "statistics") -> GaussianStats:
    """Statistics from a mean and an unbiased covariance; ``n=None`` records the count as unknown.

    Refuses (DifflensError, prefixed with ``name``) shapes that disagree, non-finite or overflowing
    values, and a sigma that is not symmetric positive semi-definite (see :mod:`difflens.metrics.validate`).
    """
    from difflens.metrics.validate import check_covariance, check_mean

    mu = np.asarray(mu)
    sigma = np.asarray(sigma)
    for key, arr in (("mu", mu), ("sigma", sigma)):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise DifflensError(f"{name}: {key} must hold real numbers, got dtype {arr.dtype}.",
                                "store mu and sigma as float64 arrays")
    mu = mu.astype(np.float64)
    sigma = sigma.astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DifflensError(
            f"{name}: inconsistent shapes, mu {mu.shape} and sigma {sigma.shape}.",
            "mu must be (D,) and sigma (D, D) for the same D")
    check_mean(mu, name)
    check_covariance(sigma, name)
    if n is None or int(n) == UNKNOWN_N:
        return GaussianStats(UNKNOWN_N, mu.copy(), sigma.copy())
    n = int(n)
    if n < 2:
        raise DifflensError(f"{name}: n={n} samples; a covariance needs at least 2.",
                            "recompute the statistics from at least 2 samples")
    return GaussianStats(n, mu.copy(), sigma * (n - 1))


def save_stats(path: str | Path, stats: GaussianStats, fingerprint: dict[str, Any],
               extra: dict[str, np.ndarray] | None = None) -> None:
    """Write ``mu``, ``sigma``, ``n``, ``fingerprint`` (+ ``extra`` arrays) to an ``.npz``, atomically.

    Everything is validated before the file is written; nothing is left behind on error.
    """
    from difflens.atomic import save_npz

    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED_KEYS))
    if clash:
        raise DifflensError(f"Extra arrays use reserved names: {', '.join(clash)}.",
                            f"Rename them; {', '.join(_RESERVED_KEYS)} are taken.")
    try:
        fp_json = json.dumps(fingerprint, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise DifflensError(f"The fingerprint is not JSON-serializable: {exc}.", None) from exc
    sigma = stats.covariance()
    if not (np.all(np.isfinite(stats.mean)) and np.all(np.isfinite(sigma))):
        raise DifflensError("Statistics contain NaN or infinite values; not saving.", "Check the features.")
    arrays: dict[str, Any] = {key: np.asarray(val) for key, val in extra.items()}
    for key, val in arrays.items():
        if val.dtype == object:
            raise DifflensError(f"Extra array {key!r} has dtype object, which needs pickle.",
                                "Store numeric or string arrays only.")
    save_npz(path, mu=stats.mean.astype(np.float64), sigma=np.asarray(sigma, dtype=np.float64),
             n=np.asarray(stats.n, dtype=np.int64), fingerprint=np.asarray(fp_json), **arrays)


def load_stats(path: str | Path) -> tuple[GaussianStats, dict[str, Any] | None, dict[str, np.ndarray]]:
    """Read a statistics ``.npz``: ``(stats, fingerprint or None, extra arrays)``.

    pytorch-fid / torch-fidelity files (``mu`` and ``sigma`` only) load with ``n = -1`` (unknown count)
    and fingerprint ``None``.
    """
    from difflens.metrics.validate import open_npz, read_npz_array

    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not found"
        raise DifflensError(f"statistics file {path}: {what}.", "pass the path of a statistics .npz")
    hint = "pass an .npz with 'mu' (D,) and 'sigma' (D, D), as difflens --save-stats and pytorch-fid write"
    with open_npz(path, "statistics file", "an .npz of statistics", hint) as data:
        keys = list(data.files)
        missing = [key for key in ("mu", "sigma") if key not in keys]
        if missing:
            found = ", ".join(sorted(keys)) or "none"
            raise DifflensError(f"statistics file {path} lacks {' and '.join(missing)} (arrays found: "
                                f"{found}).", hint)
        arrays = {key: read_npz_array(data, key, path, "statistics file") for key in keys}
    n: int | None = None
    if "n" in arrays:
        n_arr = arrays["n"]
        if n_arr.size != 1 or not np.issubdtype(n_arr.dtype, np.number):
            raise DifflensError(f"statistics file {path} has a malformed 'n' entry {n_arr.dtype} "
                                f"{n_arr.shape}.", "recompute the file")
        n = int(n_arr.reshape(()))
    fingerprint: dict[str, Any] | None = None
    if "fingerprint" in arrays:
        try:
            fingerprint = json.loads(str(arrays["fingerprint"].reshape(())))
        except (ValueError, TypeError):
            fingerprint = False  # type: ignore[assignment]
        if not isinstance(fingerprint, (dict, type(None))):  # JSON null: saved without a fingerprint
            raise DifflensError(f"statistics file {path} has an unreadable fingerprint (not a JSON object).",
                                "recompute the file")
    stats = stats_from_mu_sigma(arrays["mu"], arrays["sigma"], n, name=f"statistics file {path}")
    extra = {key: val for key, val in arrays.items() if key not in _RESERVED_KEYS}
    return stats, fingerprint, extra
