"""FID-infinity (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them").

FID_N is biased upward by a term linear in 1/N. FID-infinity evaluates FID at ``points`` sample sizes
evenly spaced from ``min_fake`` to all N generated images, fits ``FID_N = FID_inf + slope / N`` by least
squares, and reports the intercept. As mchong6/FID_IS_infinity score_infinity.py,
``calculate_FID_infinity_path`` (lines 117-171):

* sizes ``np.linspace(min_fake, N, points).astype('int32')`` (line 155; defaults 5000 and 15, line 117);
* for each size in turn, the fake rows are shuffled in place (cumulatively) and the first ``size`` taken
  (lines 160-161): subsets without replacement; here the shuffles come from ``np.random.RandomState(seed)``
  (the reference uses the unseeded global generator, the same algorithm);
* FID of each subset against the real statistics (mean and unbiased covariance, line 162);
* a linear fit of FID on 1/size, evaluated at 0 (lines 168-169).

Reported with it: the slope, the root-mean-square residual of the fit (how straight the line is; large
compared with the spread of the FIDs means the extrapolation is not to be trusted), the sizes and the FIDs.
The real side is streamed Gaussian statistics (or loaded from a file); the fake side keeps its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, Metric, MetricResult, Requirement
from difflens.metrics.config import DEFAULT_FID_INF_MIN_FAKE, DEFAULT_FID_INF_POINTS, DEFAULT_SEED
from difflens.metrics.frechet import build_with_inception_options, default_layer
from difflens.metrics.gaussian_side import GaussianSide
from difflens.metrics.streaming import Rows


@dataclass
class FidInfResult:
    value: float
    slope: float
    residual_rms: float
    sizes: list[int]
    fids: list[float]


def fid_sizes(n: int, min_fake: int, points: int) -> np.ndarray:
    """The sample sizes of the fit (score_infinity.py:155); needs more than ``min_fake`` rows (line 152)."""
    if points < 2:
        raise DifflensError(f"fid-inf needs at least 2 sample sizes for its line fit, got points={points}.",
                            "pass points >= 2 (the reference uses 15)")
    if min_fake < 2:
        raise DifflensError(f"fid-inf: min_fake={min_fake} is too small for a covariance.",
                            "pass min_fake >= 2 (the reference uses 5000)")
    if n <= min_fake:
        raise DifflensError(f"fid-inf needs more than {min_fake} generated images (min_fake), got {n}.",
                            "generate more images, or lower the smallest sample size with --fid-inf-min-fake "
                            "(metric option min_fake; FID-infinity is meant for thousands)")
    return np.linspace(min_fake, n, points).astype(np.int32)


def line_fit(sizes: np.ndarray, fids: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``fid = a + b / size``: (intercept a, slope b, root-mean-square residual)."""
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    y = np.asarray(fids, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - (a + b * x)
    return float(a), float(b), float(np.sqrt(np.mean(resid ** 2)))


class RealSide:
    """FID against one fixed real Gaussian, for many fake subsets: the factor ``F`` (``F F^T = S_r``;
    :func:`difflens.metrics.fid.psd_factor`) is computed once, and each subset's trace term is
    ``Tr((S_r S_f)^(1/2)) = sum sqrt(eig(F^T S_f F))`` (:func:`~difflens.metrics.fid.trace_sqrt_from_factor`)
    or, for a subset of n <= D rows (S_f singular), the nuclear norm of ``B F / sqrt(n - 1)`` with ``B`` the
    centered rows (the same eigenvalues, O(n^2 D) instead of a D x D eigendecomposition)."""

    def __init__(self, real: Any) -> None:
        from difflens.metrics.fid import psd_factor

        cov = real.covariance()
        self.mean = np.asarray(real.mean, dtype=np.float64)
        self.trace = float(np.trace(cov))
        self.factor = psd_factor(cov)

    def fid(self, rows: np.ndarray) -> float:
        from difflens.metrics.fid import blas_single_thread, trace_sqrt_from_factor

        x = np.asarray(rows, dtype=np.float64)
        n, dim = x.shape
        if dim != self.mean.shape[0]:
            raise DifflensError(f"feature dimensions differ: real {self.mean.shape[0]}, fake {dim}.",
                                "compare features (or statistics) of the same extractor and layer")
        mu = x.mean(axis=0)
        b = x - mu
        diff = self.mean - mu
        prod = b @ self.factor if n <= dim else (b.T @ b) / (n - 1)  # products on every BLAS thread
        with blas_single_thread():  # the LAPACK part on one (see blas_single_thread)
            if n <= dim:
                tr_sqrt = float(np.linalg.svd(prod, compute_uv=False).sum()) / np.sqrt(n - 1)
            else:
                tr_sqrt = trace_sqrt_from_factor(self.factor, prod)
        return max(float(diff @ diff) + self.trace + float((b * b).sum()) / (n - 1) - 2.0 * tr_sqrt, 0.0)


def fid_infinity(real: Any, fake: np.ndarray, min_fake: int = DEFAULT_FID_INF_MIN_FAKE,
                 points: int = DEFAULT_FID_INF_POINTS, seed: int = DEFAULT_SEED) -> FidInfResult:
    """FID-infinity of the fake rows against the real :class:`~difflens.metrics.stats.GaussianStats`."""
    rows = np.array(fake, dtype=np.float32)  # a copy: shuffled in place below
    sizes = fid_sizes(len(rows), int(min_fake), int(points))
    rng = np.random.RandomState(int(seed))
    side = RealSide(real)
    fids = []
    for size in sizes:
        rng.shuffle(rows)
        fids.append(side.fid(rows[:size]))
    a, b, rms = line_fit(sizes, np.asarray(fids))
    return FidInfResult(a, b, rms, [int(s) for s in sizes], [float(f) for f in fids])


class FidInfMetric(Metric):
    """FID-infinity on ``layer`` of ``extractor`` (Inception pool3 by default): intercept of FID_N vs 1/N."""

    name = "fid-inf"
    keys = ("fid_inf",)
    group = "features"
    permutation_invariant = False  # seeded subsets of the fake rows in their order

    def __init__(self, min_fake: int = DEFAULT_FID_INF_MIN_FAKE, points: int = DEFAULT_FID_INF_POINTS,
                 seed: int = DEFAULT_SEED, extractor: str = "inception", layer: str | None = None,
                 inception_weights: str | None = None, inception_impl: str | None = None) -> None:
        self.inception_weights, self.inception_impl = inception_weights, inception_impl
        self.min_fake, self.points, self.seed = int(min_fake), int(points), int(seed)
        if self.points < 2 or self.min_fake < 2:
            fid_sizes(self.min_fake + 1, self.min_fake, self.points)  # the one error message
        self.extractor = str(extractor)
        self.layer = layer or default_layer(self.extractor)
        self.real = GaussianSide()
        self.fake = Rows()

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(self.extractor, self.layer, "both"),)

    def build_extractors(self, device: str | None, offline: bool) -> dict[str, Any]:
        return build_with_inception_options(self, device, offline)

    def settings(self) -> dict[str, Any]:
        return {"min_fake": self.min_fake, "points": self.points, "seed": self.seed,
                "extractor": self.extractor, "layer": self.layer}

    def update(self, batch: FeatureBatch) -> None:
        arr = np.asarray(batch.features[(self.extractor, self.layer)], dtype=np.float32)
        if arr.ndim != 2:
            raise DifflensError(f"fid-inf: features must be (N, D), got shape {arr.shape}.",
                                "pass one row per image")
        if not len(arr):
            return
        if batch.real:
            self.real.add(arr)
        else:
            self.fake.add(arr)

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, FidInfMetric)
        self.real.merge(other.real)
        self.fake.extend(other.fake)

    def reset(self, keep_real: bool = False) -> None:
        self.fake.clear()
        if not keep_real:
            self.real.clear()

    def state_dict(self) -> dict[str, Any]:
        arr = self.fake.array()
        return {**self.real.state("real"),
                "fake_features": np.zeros((0, 0), np.float32) if arr is None else arr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.real.load(state, "real")
        self.fake.load(np.asarray(state["fake_features"], dtype=np.float32))

    def check_counts(self, n_real: int | None, n_fake: int | None) -> None:
        """Refuse, before any extraction, a fake side too small for the fit (``None``: count unknown)."""
        if n_fake is not None:
            fid_sizes(int(n_fake), self.min_fake, self.points)

    def load_side_stats(self, real: bool, stats: dict[str, np.ndarray],
                        fingerprint: dict[str, Any] | None = None) -> None:
        """The real side from statistics (``mu``/``sigma``); the fake side needs its rows (subsets)."""
        if not real:
            raise DifflensError("fid-inf subsamples the generated images, so --fake cannot be statistics.",
                                "pass the generated images as --fake")
        self.real.load_stats(stats, ("mu", "sigma"), fingerprint, "fid-inf --real statistics")

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        fake = self.fake.array()
        if self.real.stats is None or fake is None:
            raise DifflensError(f"fid-inf: no {'real' if self.real.stats is None else 'fake'} images were "
                                "given.",
                                "call update(images, real=True) and update(images, real=False) first")
        res = fid_infinity(self.real.stats, fake, self.min_fake, self.points, self.seed)
        sr = self.real.stats
        out = MetricResult("fid_inf", res.value,
                           {"slope": res.slope, "residual_rms": res.residual_rms, "sizes": res.sizes,
                            "fids": res.fids},
                           {"n_real": sr.n if sr.known_n else None, "n_fake": len(fake)})
        if min(res.sizes) <= fake.shape[1]:
            out.warnings.append(f"fid-inf: subsets of {min(res.sizes)} <= feature dimension {fake.shape[1]} "
                                "images have singular covariances; the fit is especially noisy")
        return {"fid_inf": out}
