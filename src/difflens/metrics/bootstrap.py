"""Bootstrap confidence intervals: resample the FAKE set with replacement (seeded), recompute the metric,
take the percentile interval (Efron & Tibshirani 1993, ch. 13). The real set is the fixed reference.

Resample ``b`` is ``rng.integers(0, M, size=M)`` from ``numpy.random.default_rng(seed)``, drawn in order,
so every metric sees the same resamples for the same seed. Helpers that make resamples cheap:

- FID (:func:`bootstrap_fid`): a resample's statistics are weighted sums of the original rows with the
  multiplicities ``w`` (mean ``w.X / M``, centered second moment ``X^T diag(w) X - M m m^T``), never a
  copied feature matrix. With ``S_real = F F^T`` factored once, the trace term of resample b is
  ``sum sqrt(eig(F^T S_b F))`` and ``F^T S_b F = Y^T diag(w) Y - M y y^T`` with ``Y = (X - mean) F``
  computed once. Per resample: O(M D^2) for the weighted Gram (the floor: the resampled covariance itself
  costs that much) plus one D x D ``eigvalsh``; when M < D the M x M Gram ``Y Y^T`` is used instead,
  O(M^2) + ``eigvalsh`` of size M.
- KID (:func:`bootstrap_kid`): the full-set unbiased MMD^2 of (real, resample) for all B resamples from
  one blockwise pass over the kernel matrices (float32 Gram products, float64 kernel sums), via
  ``sum_{jl} w_j w_l K_jl = sum((K W) * W)``. It estimates the same population MMD^2 as the subset-averaged
  KID (both are unbiased), so its percentile interval serves as the KID interval, at the cost of one
  pass instead of B subset-KIDs. O((N^2 + M^2 + N M) D + M^2 B).
- k-NN metrics (:func:`prdc_with_bootstrap`, :func:`bootstrap_prdc`): all resamples from one pass, each
  equal to ``prdc(real, fake[idx_b])`` exactly (see :func:`difflens.metrics.knn.prdc_bootstrap`).
  Duplicates in a resample sit at distance 0 from each other, so a point drawn more than k times gets a
  k-NN radius of 0; that is a property of resampling, accepted and documented.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.fid import blas_single_thread, psd_factor
from difflens.metrics.stats import GaussianStats


def bootstrap_indices(n: int, num: int, seed: int) -> Iterator[np.ndarray]:
    """``num`` resamples of ``range(n)`` with replacement (each an int64 array of length n), seeded."""
    n, num = int(n), int(num)
    if n < 1:
        raise DifflensError(f"Cannot bootstrap an empty set (n={n}).", "Add samples.")
    if num < 0:
        raise DifflensError(f"The number of bootstrap resamples must be >= 0, got {num}.", None)
    rng = np.random.default_rng(seed)
    for _ in range(num):
        yield rng.integers(0, n, size=n, dtype=np.int64)


def bootstrap_counts(n: int, num: int, seed: int) -> np.ndarray:
    """Multiplicities of every index in each resample of :func:`bootstrap_indices`: (num, n) int64."""
    out = np.zeros((int(num), int(n)), dtype=np.int64)
    for b, idx in enumerate(bootstrap_indices(n, num, seed)):
        out[b] = np.bincount(idx, minlength=n)
    return out


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval: the ((1-level)/2, (1+level)/2) quantiles (linear interpolation)."""
    if not 0.0 < float(level) < 1.0:
        raise DifflensError(f"Confidence level must be between 0 and 1, got {level}.", "Use e.g. 0.95.")
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise DifflensError("No bootstrap values to form an interval from.", "Use --bootstrap B with B >= 1.")
    if not np.all(np.isfinite(arr)):
        raise DifflensError("Bootstrap values contain NaN or infinite entries.", None)
    tail = round(50.0 * (1.0 - float(level)), 10)      # 2.5 for level 0.95, without rounding noise
    lo, hi = np.percentile(arr, [tail, 100.0 - tail])
    return float(lo), float(hi)


def resampled_stats(feats: np.ndarray, idx: np.ndarray) -> GaussianStats:
    """Gaussian statistics of ``feats[idx]`` from the multiplicities of ``idx`` (no copied rows)."""
    x = np.asarray(feats, dtype=np.float64)
    w = np.bincount(np.asarray(idx), minlength=x.shape[0]).astype(np.float64)
    n = int(w.sum())
    center = x.mean(axis=0)
    c = x - center
    m = (w @ c) / n
    m2 = (c * w[:, None]).T @ c - n * np.outer(m, m)
    return GaussianStats(n, center + m, m2)


def bootstrap_fid(real: GaussianStats, fake: np.ndarray, num: int, seed: int) -> np.ndarray:
    """FID between ``real`` and each of ``num`` resamples of the ``fake`` features: (num,) float64."""
    x = np.asarray(fake, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != real.dim:
        raise DifflensError(
            f"Feature dimension mismatch: real statistics have D={real.dim}, fake features {x.shape}.",
            "Use features from the same extractor and layer.")
    m_count, d = x.shape
    if m_count < 2:
        raise DifflensError(f"FID needs at least 2 fake samples, got {m_count}.", "Add images.")
    s_real = real.covariance()
    factor = psd_factor(s_real)
    center = x.mean(axis=0)
    c = x - center
    y = c @ factor
    c_sq = np.einsum("ij,ij->i", c, c)
    tr_real = float(np.trace(s_real))
    dmu0 = real.mean - center
    small = m_count < d
    gram = y @ y.T if small else None
    out = np.empty(int(num), dtype=np.float64)
    n1 = m_count - 1
    for b, idx in enumerate(bootstrap_indices(m_count, num, seed)):
        w = np.bincount(idx, minlength=m_count).astype(np.float64)
        mc = (w @ c) / m_count              # resample mean - center
        my = mc @ factor
        tr_fake = (w @ c_sq - m_count * (mc @ mc)) / n1
        if small:
            keep = np.nonzero(w)[0]
            sw = np.sqrt(w[keep])
            yk = y[keep] @ my
            k = gram[np.ix_(keep, keep)] - yk[:, None] - yk[None, :] + my @ my
            mat = (sw[:, None] * k * sw[None, :]) / n1
        else:
            yw = y * np.sqrt(w)[:, None]
            mat = (yw.T @ yw - m_count * np.outer(my, my)) / n1
        with blas_single_thread():
            eig = np.linalg.eigvalsh(0.5 * (mat + mat.T))
        trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        dmu = dmu0 - mc
        out[b] = max(float(dmu @ dmu + tr_real + tr_fake - 2.0 * trace_sqrt), 0.0)
    return out


def bootstrap_kid(real: np.ndarray, fake: np.ndarray, num: int, seed: int, block_size: int = 2048
                  ) -> np.ndarray:
    """Full-set unbiased MMD^2 (cubic kernel) between ``real`` and each of ``num`` resamples of ``fake``."""
    xr = np.asarray(real)
    xf = np.asarray(fake)
    if xr.ndim != 2 or xf.ndim != 2 or xr.shape[1] != xf.shape[1]:
        raise DifflensError(f"Feature shapes do not match: real {xr.shape}, fake {xf.shape}.",
                            "Use features from the same extractor and layer.")
    n, m = xr.shape[0], xf.shape[0]
    if n < 2 or m < 2:
        raise DifflensError(f"KID needs at least 2 samples per set (real {n}, fake {m}).", "Add images.")
    d = xr.shape[1]
    xr32 = np.ascontiguousarray(xr, dtype=np.float32)
    xf32 = np.ascontiguousarray(xf, dtype=np.float32)
    w = bootstrap_counts(m, num, seed).T.astype(np.float64)      # (M, B)
    bs = max(1, int(block_size))

    def kern(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        g = (a @ b.T).astype(np.float64)
        g /= d
        g += 1.0
        return g * g * g

    s_rr = 0.0
    for i in range(0, n, bs):
        for j in range(i, n, bs):
            k = kern(xr32[i:i + bs], xr32[j:j + bs])
            total = float(k.sum())
            if i == j:
                total -= float(np.trace(k))
                s_rr += total
            else:
                s_rr += 2.0 * total
    col = np.zeros(m)
    for i in range(0, n, bs):
        for j in range(0, m, bs):
            col[j:j + bs] += kern(xr32[i:i + bs], xf32[j:j + bs]).sum(axis=0)
    s_ff = np.zeros(w.shape[1])
    diag = np.zeros(m)
    for i in range(0, m, bs):
        for j in range(i, m, bs):
            k = kern(xf32[i:i + bs], xf32[j:j + bs])
            part = ((k @ w[j:j + bs]) * w[i:i + bs]).sum(axis=0)
            if i == j:
                diag[i:i + bs] = np.diagonal(k)
                s_ff += part
            else:
                s_ff += 2.0 * part
    s_ff -= diag @ w
    cross = col @ w
    return s_rr / (n * (n - 1)) + s_ff / (m * (m - 1)) - 2.0 * cross / (n * m)


def prdc_with_bootstrap(real: np.ndarray, fake: np.ndarray, num: int, seed: int, k_pr: int = 3,
                        k_dc: int = 5, block_size: int = 1024, device: str = "cpu",
                        metrics: Sequence[str] = ("precision", "recall", "density", "coverage"),
                        real_radii: dict[int, np.ndarray] | None = None
                        ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """k-NN metrics of ``fake`` and of each of ``num`` resamples of it, from one pass over the data:
    ``(values, {metric: (num,)})``. Resample b's values equal ``prdc(real, fake[idx_b])`` exactly, with
    ``idx_b`` the b-th of :func:`bootstrap_indices`; the cost is about one ``prdc`` call, not ``num``."""
    from difflens.metrics.knn import prdc_bootstrap

    m = np.asarray(fake).shape[0]
    counts = bootstrap_counts(m, num, seed).astype(np.int32)
    return prdc_bootstrap(real, fake, counts, k_pr=k_pr, k_dc=k_dc, block_size=block_size, device=device,
                          metrics=metrics, real_radii=real_radii)


def bootstrap_prdc(real: np.ndarray, fake: np.ndarray, num: int, seed: int, k_pr: int = 3, k_dc: int = 5,
                   block_size: int = 1024, device: str = "cpu",
                   metrics: Sequence[str] = ("precision", "recall", "density", "coverage"),
                   real_radii: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """k-NN metrics of each of ``num`` resamples of ``fake`` against ``real``: ``{metric: (num,)}``
    (see :func:`prdc_with_bootstrap`; the real radii are computed once or taken from ``real_radii``)."""
    return prdc_with_bootstrap(real, fake, num, seed, k_pr=k_pr, k_dc=k_dc, block_size=block_size,
                               device=device, metrics=metrics, real_radii=real_radii)[1]
