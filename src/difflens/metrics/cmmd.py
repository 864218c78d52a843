"""CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD between CLIP image embeddings.

    CMMD = 1000 * ( mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j) )
    k(a, b) = exp(-||a - b||^2 / (2 sigma^2)),  sigma = 10

on L2-normalized CLIP ViT-L/14@336 image embeddings (the biased V-statistic, diagonal included, as
google-research/cmmd computes it). Images are resized whole to the crop size (torch bicubic on float
[0,1]) and normalized with the CLIP mean/std.

The kernel sums are computed in float64 over row blocks, so memory is O(block x M), never N x M at once;
the two within-set sums use the upper block triangle only (K is symmetric). A bootstrap of the fake set is
computed in the same pass: with W the (M, B) resample counts, ``sum_ij W_ib W_jb K_ij =
sum_rows((K @ W) * W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.config import DEFAULT_CMMD_CLIP_MODEL
from difflens.metrics.feature_cache import FeatureCache, percentile_ci95, resample_indices
from difflens.metrics.results import TwoSetResult

SIGMA = 10.0
SCALE = 1000.0
BLOCK_BYTES = 128 * 1024 * 1024  # one float64 kernel block at most this large


def _block_rows(m: int, block_bytes: int) -> int:
    return max(1, block_bytes // (8 * max(1, m)))


def _kernel_block(a: Any, b: Any, an: Any, bn: Any, gamma: float) -> Any:
    """``exp(-gamma ||a_i - b_j||^2)`` for a block of rows, computed in place in one buffer."""
    k = a @ b.T
    k.mul_(-2.0).add_(an[:, None]).add_(bn[None, :]).mul_(-gamma).exp_()
    return k


def _kernel_sums(a: Any, b: Any, gamma: float, block_bytes: int, w_cols: Any = None) -> tuple[float, Any]:
    """``sum_ij k(a_i, b_j)`` and, when ``w_cols`` (M, B) is given, ``sum_ij k(a_i, b_j) w_cols[j, b]``
    for each resample b (rows unweighted)."""
    import torch

    an, bn = (a * a).sum(1), (b * b).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    boot = None if w_cols is None else torch.zeros(w_cols.shape[1], dtype=torch.float64, device=a.device)
    step = _block_rows(b.shape[0], block_bytes)
    for i in range(0, a.shape[0], step):
        k = _kernel_block(a[i:i + step], b, an[i:i + step], bn, gamma)
        total += k.sum()
        if boot is not None:
            boot += (k @ w_cols).sum(0)
        del k
    return float(total), boot


def _kernel_sums_sym(a: Any, gamma: float, block_bytes: int, w: Any = None) -> tuple[float, Any]:
    """``sum_ij k(a_i, a_j)`` (and ``sum_ij w[i, b] k(a_i, a_j) w[j, b]``) from the upper block triangle
    only: each off-diagonal block counts twice, saving about half the work."""
    import torch

    an = (a * a).sum(1)
    n = a.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    boot = None if w is None else torch.zeros(w.shape[1], dtype=torch.float64, device=a.device)
    step = _block_rows(n, block_bytes)
    for i in range(0, n, step):
        j = min(i + step, n)
        k = _kernel_block(a[i:j], a[i:], an[i:j], an[i:], gamma)  # columns i..: diagonal block, then rest
        diag, off = k[:, :j - i], k[:, j - i:]
        total += diag.sum() + 2.0 * off.sum()
        if boot is not None:
            wi = w[i:j]
            boot += ((diag @ wi) * wi).sum(0)
            if off.shape[1]:
                boot += 2.0 * ((off @ w[j:]) * wi).sum(0)
        del k
    return float(total), boot


def _as_tensor(x: Any, device: str) -> Any:
    import numpy as np
    import torch

    t = torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)
    if t.ndim != 2 or t.shape[0] == 0:
        raise DifflensError(f"CMMD needs a non-empty (N, D) embedding array, got shape {tuple(t.shape)}.",
                            "pass at least one image per set")
    return t / torch.linalg.norm(t, dim=1, keepdim=True)


CmmdResult = TwoSetResult


def cmmd_from_embeddings(real: Any, fake: Any, *, sigma: float = SIGMA, scale: float = SCALE,
                         bootstrap: int = 0, seed: int = 0, device: str = "cpu",
                         block_bytes: int = BLOCK_BYTES) -> CmmdResult:
    """CMMD between two (N, D) / (M, D) CLIP embedding arrays (normalized here, float64).

    ``bootstrap`` > 0 adds a 95% percentile interval from resampling the fake set with replacement.
    """
    import numpy as np
    import torch

    x, y = _as_tensor(real, device), _as_tensor(fake, device)
    if x.shape[1] != y.shape[1]:
        raise DifflensError(f"embedding dimensions differ: {x.shape[1]} (real) vs {y.shape[1]} (fake).",
                            "compute both sets with the same CLIP model")
    n, m = x.shape[0], y.shape[0]
    gamma = 1.0 / (2.0 * sigma * sigma)
    w = None
    if bootstrap > 0:
        counts = np.stack([np.bincount(idx, minlength=m) for idx in resample_indices(m, bootstrap, seed)],
                          axis=1)
        w = torch.as_tensor(counts.astype(np.float64), device=device)
    kxx, _ = _kernel_sums_sym(x, gamma, block_bytes)
    kyy, kyy_b = _kernel_sums_sym(y, gamma, block_bytes, w)
    kxy, kxy_b = _kernel_sums(x, y, gamma, block_bytes, w_cols=w)
    value = scale * (kxx / (n * n) + kyy / (m * m) - 2.0 * kxy / (n * m))
    result = CmmdResult(value=float(value), n_real=n, n_fake=m)
    if w is not None:
        boots = scale * (kxx / (n * n) + kyy_b.cpu().numpy() / (m * m) - 2.0 * kxy_b.cpu().numpy() / (n * m))
        result.ci95 = percentile_ci95(boots)
    return result


def compute_cmmd(real_images: Sequence[Any], fake_images: Sequence[Any], *,
                 clip_model: str = DEFAULT_CMMD_CLIP_MODEL, encoder: Any = None, device: str | None = None,
                 dtype: str = "float32", offline: bool = False, cache: FeatureCache | None = None,
                 real_digest: str | None = None, fake_digest: str | None = None, batch_size: int = 32,
                 bootstrap: int = 0, seed: int = 0) -> CmmdResult:
    """CMMD between two image sets (paths, PIL images or uint8 arrays), CLIP features cached."""
    from difflens.metrics.clip import PROTOCOL_CMMD, ClipEncoder

    for name, images in (("real", real_images), ("fake", fake_images)):
        if len(images) == 0:
            raise DifflensError(f"no {name} images for CMMD.", f"pass a {name} folder with images")
    enc = encoder or ClipEncoder.load(clip_model, device=device, dtype=dtype, offline=offline,
                                      flag="--cmmd-clip-model")
    x = enc.image_features(real_images, PROTOCOL_CMMD, cache, real_digest, batch_size)
    y = enc.image_features(fake_images, PROTOCOL_CMMD, cache, fake_digest, batch_size)
    return cmmd_from_embeddings(x, y, bootstrap=bootstrap, seed=seed)
