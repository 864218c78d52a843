"""FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"): the Fréchet
distance (the FID formula) on DINOv2 ViT-L/14 CLS features.

    FD = ||mu_r - mu_g||^2 + Tr S_r + Tr S_g - 2 Tr((S_r S_g)^(1/2)),   S unbiased (N - 1)

Preprocessing follows dgm-eval: PIL bicubic resize of the whole image to 224 x 224 (no crop), scale to
[0, 1], ImageNet mean/std normalization. The feature is transformers' ``Dinov2Model`` ``pooler_output``:
the CLS token after the final layer norm (torch hub's ``x_norm_clstoken``), 1024-d for ViT-L/14.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.errors import DifflensError
from difflens.features.dinov2 import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, Dinov2Encoder, preprocess
from difflens.metrics.config import DEFAULT_DINOV2_MODEL
from difflens.metrics.feature_cache import FeatureCache, percentile_ci95, resample_indices
from difflens.metrics.results import TwoSetResult

__all__ = ["DEFAULT_DINOV2_MODEL", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SIZE", "Dinov2Encoder", "FdResult",
           "compute_fd_dinov2", "fd_from_features", "fd_with_bootstrap", "gaussian", "preprocess"]

# ------------------------------------------------------------------------------------------------ math


def gaussian(features: Any) -> Any:
    """Gaussian statistics (n, mean, centered second moment; float64) of an (N, D) feature array:
    :class:`difflens.metrics.stats.GaussianStats`, shared with FID."""
    import numpy as np

    from difflens.metrics.stats import GaussianStats

    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DifflensError(f"FD needs at least 2 feature vectors per set, got shape {f.shape}.",
                            "pass at least 2 images per set")
    return GaussianStats.from_features(f.astype(np.float64))


def fd_from_features(real: Any, fake: Any) -> float:
    """FD between two (N, D) feature arrays: the FID formula (:func:`difflens.metrics.fid.fid_from_stats`,
    unbiased covariances, exact trace term without ``sqrtm``)."""
    import numpy as np

    from difflens.metrics.fid import fid_from_stats

    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DifflensError(f"feature shapes do not match: {real.shape} vs {fake.shape}.",
                            "compute both sets with the same DINOv2 model")
    return float(fid_from_stats(gaussian(real), gaussian(fake)))


FdResult = TwoSetResult


def fd_with_bootstrap(real: Any, fake: Any, bootstrap: int = 0, seed: int = 0) -> FdResult:
    """FD, and with ``bootstrap`` > 0 a 95% percentile interval from resampling the fake set."""
    import numpy as np

    from difflens.metrics.fid import fid_from_stats

    real_stats = gaussian(real)
    fake = np.asarray(fake, dtype=np.float64)
    value = fd_from_features(real, fake)
    result = FdResult(value=value, n_real=len(real), n_fake=len(fake))
    if bootstrap > 0:
        vals = [fid_from_stats(real_stats, gaussian(fake[idx]))
                for idx in resample_indices(len(fake), bootstrap, seed)]
        result.ci95 = percentile_ci95(vals)
    return result


def compute_fd_dinov2(real_images: Sequence[Any], fake_images: Sequence[Any], *,
                      dinov2_model: str = DEFAULT_DINOV2_MODEL, encoder: Dinov2Encoder | None = None,
                      device: str | None = None, dtype: str = "float32", offline: bool = False,
                      cache: FeatureCache | None = None, real_digest: str | None = None,
                      fake_digest: str | None = None, batch_size: int = 32, bootstrap: int = 0,
                      seed: int = 0) -> FdResult:
    """FD-DINOv2 between two image sets (paths, PIL images or uint8 arrays), features cached."""
    for name, images in (("real", real_images), ("fake", fake_images)):
        if len(images) < 2:
            raise DifflensError(f"FD-DINOv2 needs at least 2 {name} images, got {len(images)}.",
                                f"pass a {name} folder with more images")
    enc = encoder or Dinov2Encoder.load(dinov2_model, device=device, dtype=dtype, offline=offline)
    x = enc.image_features(real_images, cache, real_digest, batch_size)
    y = enc.image_features(fake_images, cache, fake_digest, batch_size)
    return fd_with_bootstrap(x, y, bootstrap, seed)
