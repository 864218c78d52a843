"""Vendi score (Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for Machine
Learning"): the effective number of distinct samples in the generated set.

    VS_q = exp(H_q(lambda)),  lambda = eigenvalues of K / n,  K_ij = cos(x_i, x_j)
    H_1 = -sum lambda log lambda;  H_q = log(sum lambda^q) / (1 - q);  H_inf = -log max lambda

With the cosine kernel, K = X X^T for the row-normalized features X (n x D), and the nonzero eigenvalues of
K / n are those of the D x D matrix X^T X / n (the vendi-score package's ``score_dual``). So the state is
n and the float64 Gram ``sum_i x_i x_i^T`` of the normalized rows (upper triangle, updated in place by BLAS
``dsyrk``): mergeable by addition, O(D^2) whatever n. Eigenvalues below rounding level (``max * D * eps``;
the rank is at most min(n, D)) count as zero, so orders q < 1 do not pick up the null space's noise. A zero
feature row is kept as a zero row (as scikit-learn's ``normalize`` in vendi-score does): it adds nothing to
K but counts in n; that is warned.

Computed on the fake side only; features: Inception pool3 by default (``extractor``/``layer`` select
another registered extractor's layer); the order ``q`` (a number > 0, or ``inf``) is a metric option.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, Metric, MetricResult, Requirement
from difflens.metrics.config import DEFAULT_VENDI_EXTRACTOR, DEFAULT_VENDI_LAYER, DEFAULT_VENDI_Q


def parse_order(q: float | str) -> float:
    """The order q: a positive number, or ``inf`` / ``"inf"`` (-> ``math.inf``)."""
    try:
        val = float(q)
    except (TypeError, ValueError):
        val = math.nan
    if not val > 0:  # NaN, zero, negative
        raise DifflensError(f"vendi: the order q must be a positive number or 'inf', got {q!r}.",
                            "pass q=1 (Shannon, the paper's score), 2, 0.5, ... or 'inf'")
    return val


def entropy_q(lam: np.ndarray, q: float) -> float:
    """Renyi entropy of order ``q`` of the distribution ``lam`` (zeros dropped; q = 1: Shannon)."""
    p = lam[lam > 0]
    if q == 1.0:
        return float(-(p * np.log(p)).sum())
    if math.isinf(q):
        return float(-np.log(p.max()))
    return float(np.log((p ** q).sum()) / (1.0 - q))


def vendi_from_gram(gram: np.ndarray, n: int, q: float) -> float:
    """exp(H_q) of the eigenvalues of ``gram / n`` (``gram`` = sum of the normalized rows' outer products,
    symmetric; only its upper triangle is read)."""
    from difflens.metrics.fid import blas_single_thread

    sym = np.asarray(gram, dtype=np.float64) / n
    with blas_single_thread():
        w = np.linalg.eigvalsh(sym, UPLO="U")
    tol = max(float(w[-1]), 0.0) * w.shape[0] * np.finfo(np.float64).eps
    return float(np.exp(entropy_q(np.where(w > tol, w, 0.0), q)))


def normalized(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows divided by their L2 norm (float64); zero rows stay zero. Returns (rows, zero-row count)."""
    x = np.asarray(arr, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    return x / np.where(zero, 1.0, norms)[:, None], int(zero.sum())


class VendiMetric(Metric):
    """Vendi score of the generated set, cosine kernel on ``layer`` of ``extractor``, order ``q``."""

    name = "vendi"
    keys = ("vendi",)
    group = "features"

    def __init__(self, q: float | str = DEFAULT_VENDI_Q, extractor: str = DEFAULT_VENDI_EXTRACTOR,
                 layer: str | None = None, inception_weights: str | None = None,
                 inception_impl: str | None = None) -> None:
        from difflens.metrics.frechet import default_layer

        self.inception_weights, self.inception_impl = inception_weights, inception_impl
        self.q = parse_order(q)
        self.extractor = str(extractor)
        self.layer = layer or (DEFAULT_VENDI_LAYER if self.extractor == DEFAULT_VENDI_EXTRACTOR
                               else default_layer(self.extractor))
        self.reset()

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(self.extractor, self.layer, "fake"),)

    def build_extractors(self, device: str | None, offline: bool) -> dict[str, Any]:
        from difflens.metrics.frechet import build_with_inception_options

        return build_with_inception_options(self, device, offline)

    def settings(self) -> dict[str, Any]:
        return {"q": "inf" if math.isinf(self.q) else self.q, "extractor": self.extractor,
                "layer": self.layer}

    def update(self, batch: FeatureBatch) -> None:
        from scipy.linalg.blas import dsyrk

        if batch.real:
            return
        arr = np.asarray(batch.features[(self.extractor, self.layer)])
        if arr.ndim != 2:
            raise DifflensError(f"vendi: features must be (N, D), got shape {arr.shape}.",
                                "pass one row per image")
        if not len(arr):
            return
        if not np.all(np.isfinite(arr)):
            raise DifflensError("vendi: features contain NaN or infinite values.",
                                "check the extractor input (corrupt images, overflow in float16)")
        x, zeros = normalized(arr)
        if self.gram is not None and self.gram.shape[0] != x.shape[1]:
            raise DifflensError(f"vendi: feature dimension changed from {self.gram.shape[0]} to "
                                f"{x.shape[1]}.", "feed features of one extractor layer")
        if self.gram is None:
            self.gram = np.zeros((x.shape[1], x.shape[1]), order="F")
        self.gram = dsyrk(1.0, x, beta=1.0, c=self.gram, trans=1, lower=0, overwrite_c=1)  # upper, in place
        self.n += len(x)
        self.zero_rows += zeros

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, VendiMetric)
        if other.gram is not None:
            if self.gram is not None and self.gram.shape != other.gram.shape:
                raise DifflensError("vendi: cannot merge states of different feature dimensions.",
                                    "merge states of one extractor layer")
            self.gram = np.asfortranarray(np.triu(other.gram) + (0.0 if self.gram is None else
                                                                 np.triu(self.gram)))
        self.n += other.n
        self.zero_rows += other.zero_rows

    def reset(self, keep_real: bool = False) -> None:
        self.gram: np.ndarray | None = None
        self.n = 0
        self.zero_rows = 0

    def state_dict(self) -> dict[str, Any]:
        return {"fake_gram": np.zeros((0, 0)) if self.gram is None else self.gram, "fake_n": self.n,
                "fake_zero_rows": self.zero_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gram = np.asfortranarray(np.asarray(state["fake_gram"], dtype=np.float64))
        self.gram = gram if gram.size else None
        self.n = int(state["fake_n"])
        self.zero_rows = int(state["fake_zero_rows"])

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        if self.gram is None or self.n == 0:
            raise DifflensError("vendi: no generated images were given.",
                                "call update(images, real=False) first")
        res = MetricResult("vendi", vendi_from_gram(self.gram, self.n, self.q),
                           {"q": "inf" if math.isinf(self.q) else self.q}, {"n_fake": self.n})
        if self.zero_rows:
            res.warnings.append(f"vendi: {self.zero_rows} of {self.n} feature rows are all zero (cosine "
                                "similarity undefined); they count as samples similar to nothing, not even "
                                "themselves")
        return {"vendi": res}
