"""Frechet distance between Gaussians (FID; Heusel et al. 2017), exact and without ``scipy.linalg.sqrtm``.

    FID = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr((S1 S2)^(1/2))

The trace term (DESIGN.md 3): S1 S2 is similar to a symmetric PSD matrix, so its eigenvalues are real and
non-negative and ``Tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i)``. Writing ``S1 = F F^T``, the eigenvalues of
``S1 S2`` are those of ``F^T S2 F`` (symmetric PSD), computed with ``eigvalsh``; rounding negatives are
clipped to 0. ``F`` is the Cholesky factor of S1 when S1 is numerically positive definite (one Cholesky
instead of a full eigendecomposition, which is several times cheaper than forming ``S1^(1/2)`` by
``eigh``; ``F^T S2 F`` has the eigenvalues of ``S1^(1/2) S2 S1^(1/2)``, the textbook symmetric route).
When a covariance is rank-deficient (N <= D, say) the trace is the nuclear norm of ``F1^T F2`` with
rank-truncated eigh factors: no square roots of rounding noise in the null space. All in float64.

When the feature matrices are at hand and N < D, the same trace is the nuclear norm of ``B A^T`` for the
centered feature matrices (see :func:`trace_sqrt_product_from_features`), O(N^2 D) instead of O(D^3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.stats import GaussianStats


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run BLAS and LAPACK calls on one thread (threadpoolctl; a no-op without it).

    Multi-threaded OpenBLAS LAPACK (Cholesky, eigvalsh) synchronizes its threads thousands of times; on a
    busy machine each synchronization waits for a descheduled thread, and a 2048 x 2048 ``eigvalsh`` was
    measured 15x slower on 2 threads than on 1 (Cholesky 18x) on the shared 2-core box. On an idle
    machine one thread costs little here (these routines scale poorly anyway). No-op without threadpoolctl.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _check_square(sigma: np.ndarray, name: str) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise DifflensError(f"{name} must be a square (D, D) matrix, got shape {sigma.shape}.", None)
    if not np.all(np.isfinite(sigma)):
        raise DifflensError(f"{name} contains NaN or infinite values.", "Recompute the statistics.")
    return sigma


def _cholesky(sym: np.ndarray) -> np.ndarray | None:
    try:
        return np.linalg.cholesky(sym)
    except np.linalg.LinAlgError:
        return None


def _eigh_factor(sym: np.ndarray) -> np.ndarray:
    """``V_r diag(sqrt(w_r))`` over the eigenvalues above rounding level (D x r, r = numerical rank)."""
    w, v = np.linalg.eigh(sym)
    keep = w > max(float(w[-1]), 0.0) * sym.shape[0] * np.finfo(np.float64).eps
    return v[:, keep] * np.sqrt(w[keep])


def psd_factor(sigma: np.ndarray) -> np.ndarray:
    """A matrix ``F`` with ``F @ F.T == sigma``: Cholesky, or a rank-truncated eigh factor if not PD."""
    sym = _check_square(sigma, "sigma")
    with blas_single_thread():
        chol = _cholesky(sym)
        return chol if chol is not None else _eigh_factor(sym)


def trace_sqrt_from_factor(factor: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^(1/2))`` given ``F`` with ``F F^T = S1``: sum of sqrt(eigvalsh(F^T S2 F)), clipped."""
    m = factor.T @ sigma2 @ factor
    m = 0.5 * (m + m.T)
    w = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_two_cholesky(l1: np.ndarray, l2: np.ndarray) -> float:
    """``sum sqrt(eigvalsh(Z Z^T))`` with ``Z = L1^T L2``: ``Z Z^T = L1^T S2 L1`` in 2 D^3 flops
    (a triangular product and a symmetric rank-k update) instead of two general products (4 D^3)."""
    from scipy.linalg.blas import dsyrk, dtrmm

    z = dtrmm(1.0, l1, l2, side=0, lower=1, trans_a=1)
    m = dsyrk(1.0, z, trans=0, lower=0)            # upper triangle of Z Z^T
    w = np.linalg.eigvalsh(m, UPLO="U")
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^(1/2))`` for symmetric PSD S1, S2 (float64).

    Both positive definite (the usual case, N > D): ``sum sqrt(eigvalsh(L1^T S2 L1))`` with ``L1``, ``L2``
    the Cholesky factors, ``L1^T S2 L1`` formed as ``Z Z^T``, ``Z = L1^T L2``. Otherwise (a rank-deficient
    covariance, e.g. N <= D): the nuclear norm of ``F1^T F2`` with rank-truncated factors, which avoids
    square roots of rounding noise in the null space.
    """
    s1 = _check_square(sigma1, "sigma1")
    s2 = _check_square(sigma2, "sigma2")
    if s1.shape != s2.shape:
        raise DifflensError(
            f"Feature dimension mismatch: covariances are {s1.shape} and {s2.shape}.",
            "Compare statistics of the same extractor and layer.")
    # symmetric by construction: Cholesky and eigh read the lower triangle only, so no symmetrizing copy
    with blas_single_thread():
        l1, l2 = _cholesky(s1), _cholesky(s2)
        if l1 is not None and l2 is not None:
            return _trace_sqrt_two_cholesky(l1, l2)
        f1 = l1 if l1 is not None else _eigh_factor(s1)
        f2 = l2 if l2 is not None else _eigh_factor(s2)
        if f1.shape[1] == 0 or f2.shape[1] == 0:
            return 0.0
        return float(np.linalg.svd(f1.T @ f2, compute_uv=False).sum())


def trace_sqrt_product_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """``Tr((S_a S_b)^(1/2))`` from feature matrices: nuclear norm of ``B_c A_c^T / sqrt((na-1)(nb-1))``.

    ``A_c``, ``B_c`` are the centered features (float64). Cheaper than the covariance route when
    ``min(na, nb)`` is well below D; same value to float64 rounding.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DifflensError(f"Feature shapes {a.shape} and {b.shape} do not match.", None)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise DifflensError("A covariance needs at least 2 samples per set.", None)
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    prod = bc @ ac.T
    with blas_single_thread():
        sv = np.linalg.svd(prod, compute_uv=False)
    return float(sv.sum() / np.sqrt((a.shape[0] - 1) * (b.shape[0] - 1)))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64; tiny negatives give 0).

    Each sigma must be symmetric positive semi-definite and each value within the bounds of
    :mod:`difflens.metrics.validate` (a DifflensError otherwise: FID of an indefinite "covariance" is a
    number without meaning).
    """
    from difflens.metrics.validate import check_covariance, check_mean

    mu1 = np.asarray(mu1, dtype=np.float64)
    mu2 = np.asarray(mu2, dtype=np.float64)
    s1 = _check_square(sigma1, "sigma1")
    s2 = _check_square(sigma2, "sigma2")
    if mu1.ndim != 1 or mu1.shape != mu2.shape or s1.shape != (mu1.shape[0],) * 2 or s2.shape != s1.shape:
        raise DifflensError(
            f"Feature dimension mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}.",
            "Compare statistics of the same extractor and layer.")
    for name, mu, sigma in (("statistics 1", mu1, s1), ("statistics 2", mu2, s2)):
        check_mean(mu, name)
        check_covariance(sigma, name)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)


def _moment_and_scale(st: GaussianStats) -> tuple[np.ndarray, float]:
    """(matrix, c) with covariance = c * matrix, without allocating the covariance."""
    if not st.known_n:
        return st.m2, 1.0
    if st.n < 2:
        raise DifflensError(
            f"A covariance needs at least 2 samples, these statistics have {st.n}.",
            "Use a set of at least 2 images (FID needs thousands to be meaningful).")
    return st.m2, 1.0 / (st.n - 1)


def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """FID between two :class:`GaussianStats` (unbiased covariances ``m2 / (n - 1)``).

    Works on ``m2`` directly: ``Tr((c1 M1 c2 M2)^(1/2)) = sqrt(c1 c2) Tr((M1 M2)^(1/2))``.
    """
    if a.dim != b.dim:
        raise DifflensError(
            f"Feature dimension mismatch: statistics have D={a.dim} and D={b.dim}.",
            "Compare statistics of the same extractor and layer.")
    m1, c1 = _moment_and_scale(a)
    m2, c2 = _moment_and_scale(b)
    mu1 = np.asarray(a.mean, dtype=np.float64)
    mu2 = np.asarray(b.mean, dtype=np.float64)
    diff = mu1 - mu2
    tr = c1 * float(np.trace(m1)) + c2 * float(np.trace(m2))
    value = float(diff @ diff) + tr - 2.0 * np.sqrt(c1 * c2) * trace_sqrt_product(m1, m2)
    return max(value, 0.0)
