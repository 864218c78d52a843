"""Inception Score (Salimans et al. 2016), exactly as torch-fidelity 0.4's ``isc_features_to_metric``.

    IS = exp( E_x KL(p(y|x) || p(y)) )

on the logits of the 1008-way head (no bias). The rows are shuffled with
``numpy.random.RandomState(seed).permutation(N)`` (torch-fidelity's ``samples_shuffle=True``, seed 2020),
split into ``splits`` consecutive chunks ``[i*N//splits, (i+1)*N//splits)``; in each chunk
``p(y)`` is the mean of the softmax rows and the score is ``exp(mean_x sum_y p log(p / p(y)))``.
The result is the mean and population std (``np.std``) over chunks. Float64 throughout.

Small samples (:func:`small_sample_warning`): the score of a split is ``exp(I(x; y))`` over its images, and
a mutual information is at most the log of the number of images, so a split of ``m`` images scores at most
``m``. Published IS uses 50,000 images in 10 splits. A warning is given below 1,000 images in all or below
100 images per split (then any model whose IS exceeds 100, as ImageNet-class generators do, is capped).
"""

from __future__ import annotations

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.kid import DEFAULT_SEED

MIN_IS_SAMPLES = 1000
MIN_IS_PER_SPLIT = 100


def small_sample_warning(n: int, splits: int) -> str | None:
    """The warning for an IS on too few images (rule in the module docstring), or None."""
    per_split = n // max(splits, 1)
    if n >= MIN_IS_SAMPLES and per_split >= MIN_IS_PER_SPLIT:
        return None
    return (f"IS on {n} images in {splits} split(s) of {per_split}+: a split of m images scores at most m, "
            f"so the value is biased low and not comparable to published IS (50,000 images, 10 splits); use "
            f"at least {MIN_IS_SAMPLES} images and {MIN_IS_PER_SPLIT} per split")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """(mean, std) of the Inception Score of ``logits`` (N, C) over ``splits`` splits."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise DifflensError(f"Logits must be a 2-D (N, classes) array, got shape {logits.shape}.", None)
    n = logits.shape[0]
    splits = int(splits)
    if splits < 1:
        raise DifflensError(f"The number of IS splits must be at least 1, got {splits}.", None)
    if n < splits:
        raise DifflensError(
            f"Inception Score with {splits} splits needs at least {splits} samples, got {n}.",
            "Add images or lower the number of splits.")
    if not np.all(np.isfinite(logits)):
        raise DifflensError("Logits contain NaN or infinite values.", "Check the extractor input.")
    perm = np.random.RandomState(seed).permutation(n)
    log_p = _log_softmax(logits[perm].astype(np.float64))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_p_chunk = p[lo:hi], log_p[lo:hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q = np.log(p_chunk.mean(axis=0, keepdims=True))
            terms = np.where(p_chunk > 0, p_chunk * (log_p_chunk - log_q), 0.0)  # 0 log 0 = 0
        kl = terms.sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))
