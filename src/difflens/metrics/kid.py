"""Kernel Inception Distance (Binkowski et al. 2018), subset by subset exactly as torch-fidelity 0.4.

    k(x, y) = (x.y / d + 1)^3
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m(m-1)) + sum_{i != j} k(y_i, y_j) / (m(m-1))
              - 2 sum_{i,j} k(x_i, y_j) / m^2

over ``num_subsets`` pairs of subsets of size ``m``, drawn without replacement by
``numpy.random.RandomState(seed)``: for each subset first ``rng.choice(len(fake), m, replace=False)``,
then ``rng.choice(len(real), m, replace=False)`` -- torch-fidelity's ``kid_features_to_metric(features_1,
features_2)`` with ``features_1`` the generated set (its ``input1``) and ``features_2`` the real set, and
its default seed 2020. KID is the mean of the subset values and its ``std`` the population standard
deviation (``np.std``). It can be slightly negative.

When the subset size equals the size of a set, every subset holds that whole set: with both sets that
small, every subset is the same pair of sets and the std over subsets is rounding noise (recorded as
``None``, undefined); with one, the std only reflects the subsampling of the other set. Both cases give a
warning. A single subset has no std either (``None``).

Numerics: the kernel matrices and sums are float64 (torch-fidelity computes them in the features'
dtype, float32 for Inception features, so the two agree to about 1e-6 relative, not bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.config import DEFAULT_SEED  # torch_fidelity.defaults: rng_seed


@dataclass
class KIDResult:
    """KID mean over subsets, population std (None: undefined, every subset is the same), the subset size
    and count used, and warnings."""

    value: float
    std: float | None
    subset_size: int
    num_subsets: int
    warnings: list[str] = field(default_factory=list)


def _check_pair(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real = np.asarray(real)
    fake = np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2:
        raise DifflensError(f"Features must be 2-D (N, D) arrays, got {real.shape} and {fake.shape}.", None)
    if real.shape[1] != fake.shape[1]:
        raise DifflensError(
            f"Feature dimension mismatch: real D={real.shape[1]}, fake D={fake.shape[1]}.",
            "Extract both sets with the same extractor and layer.")
    if min(real.shape[0], fake.shape[0]) < 2:
        raise DifflensError(
            f"KID needs at least 2 samples per set (real {real.shape[0]}, fake {fake.shape[0]}).",
            "Add images.")
    from difflens.metrics.validate import check_features

    return check_features(real, "KID real features"), check_features(fake, "KID fake features")


def _whole_set_note(m: int, n_real: int, n_fake: int) -> str | None:
    """What a subset size equal to a set size does to the std over subsets (None when it does not)."""
    whole = [name for name, n in (("real", n_real), ("fake", n_fake)) if n == m]
    if len(whole) == 2:
        return ("every subset is then the whole of both sets, so the std over subsets is undefined (recorded "
                "as null); use --bootstrap for an interval")
    if whole:
        return (f"every subset then holds the whole {whole[0]} set, so the std over subsets reflects only "
                "the sampling of the other set and understates the uncertainty")
    return None


def _poly_kernel_sums(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(sum_{i!=j} k(x_i,x_j), sum_{i!=j} k(y_i,y_j), sum_ij k(x_i,y_j)) for the cubic kernel, float64."""
    d = x.shape[1]

    def kern(g: np.ndarray) -> np.ndarray:
        g /= d
        g += 1.0
        return g * g * g

    kxx = kern(x @ x.T)
    kyy = kern(y @ y.T)
    kxy = kern(x @ y.T)
    return (float(kxx.sum() - np.trace(kxx)), float(kyy.sum() - np.trace(kyy)), float(kxy.sum()))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two equal-size samples with the cubic polynomial kernel (float64)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = x.shape[0]
    if y.shape[0] != m:
        raise DifflensError("mmd2_unbiased needs two samples of the same size.", None)
    sxx, syy, sxy = _poly_kernel_sums(x, y)
    return (sxx + syy) / (m * (m - 1)) - 2.0 * sxy / (m * m)


def _map_threads(fn: Any, items: list[Any]) -> list[float]:
    """``[fn(x) for x in items]`` on one thread per core, each with a single-threaded BLAS (robust on a
    busy machine, where multi-threaded BLAS calls of this size wait on descheduled threads)."""
    from difflens.metrics.knn.backend import cpu_count as _cpu_count

    workers = min(_cpu_count(), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    from difflens.metrics.fid import blas_single_thread

    with blas_single_thread(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = DEFAULT_SEED) -> KIDResult:
    """KID between ``real`` (N, D) and ``fake`` (M, D) features; see the module docstring.

    When a set has fewer than ``subset_size`` samples, the subset size becomes ``min(N, M)`` and a
    warning is recorded (each subset is then a permutation of the smaller set).
    """
    real, fake = _check_pair(real, fake)
    if int(num_subsets) < 1 or int(subset_size) < 2:
        raise DifflensError(
            f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}.", None)
    num_subsets = int(num_subsets)
    m = int(subset_size)
    warnings: list[str] = []
    smallest = min(real.shape[0], fake.shape[0])
    note = _whole_set_note(min(m, smallest), real.shape[0], fake.shape[0])
    if smallest < m:
        warnings.append(
            f"KID subset size reduced from {m} to {smallest}: the smaller set has only {smallest} samples "
            f"(real {real.shape[0]}, fake {fake.shape[0]}); values are not comparable to subset size {m}"
            + (f"; {note}" if note else "") + ".")
        m = smallest
    elif note:
        warnings.append(f"KID subset size {m} equals the number of samples (real {real.shape[0]}, fake "
                        f"{fake.shape[0]}): {note}.")
    rng = np.random.RandomState(seed)
    draws = []
    for _ in range(num_subsets):          # torch-fidelity's order: fake subset, then real subset
        idx_fake = rng.choice(fake.shape[0], m, replace=False)
        idx_real = rng.choice(real.shape[0], m, replace=False)
        draws.append((idx_fake, idx_real))
    mmds = np.asarray(_map_threads(lambda d: mmd2_unbiased(fake[d[0]], real[d[1]]), draws), dtype=np.float64)
    value, std = float(np.mean(mmds)), float(np.std(mmds))
    if not (np.all(np.isfinite(mmds)) and np.isfinite(value) and np.isfinite(std)):
        raise DifflensError("KID is not finite: the features are too large for the cubic kernel.",
                            "pass the extractor's raw features")
    both_whole = real.shape[0] == m and fake.shape[0] == m
    undefined = both_whole or num_subsets == 1  # no spread to measure
    return KIDResult(value, None if undefined else std, m, num_subsets, warnings)
