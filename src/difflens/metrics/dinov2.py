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
from difflens.metrics.feature_cache import (
    FeatureCache,
    FeatureKey,
    NoCache,
    as_rgb_image,
    batches,
    inputs_digest,
    load_hf_model,
    percentile_ci95,
    resample_indices,
    weights_digest_for,
)
from difflens.metrics.results import TwoSetResult

DEFAULT_DINOV2_MODEL = "facebook/dinov2-large"
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: Sequence[Any], size: int = IMAGE_SIZE) -> Any:
    """(B, 3, size, size) float32: PIL bicubic resize to size x size, /255, ImageNet normalization."""
    import numpy as np
    import torch
    from PIL import Image

    arrs = []
    for im in images:
        pil = as_rgb_image(im)
        if pil.size != (size, size):
            pil = pil.resize((size, size), resample=Image.Resampling.BICUBIC)
        arrs.append(np.asarray(pil, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


class Dinov2Encoder:
    """A transformers ``Dinov2Model``; features are CLS tokens after the final layer norm."""

    def __init__(self, model: Any, model_id: str, device: str, dtype: str, weights_digest: str,
                 image_size: int = IMAGE_SIZE) -> None:
        self.model = model
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.weights_digest = weights_digest
        self.image_size = image_size

    @classmethod
    def load(cls, model_id: str = DEFAULT_DINOV2_MODEL, device: str | None = None, dtype: str = "float32",
             offline: bool = False) -> Dinov2Encoder:
        from transformers import Dinov2Model

        from difflens.models import resolve_device, resolve_dtype

        torch_dtype = resolve_dtype(dtype)
        dev = resolve_device(device)
        model = load_hf_model(Dinov2Model, model_id, offline, "DINOv2 model", "--dinov2-model",
                              dtype=torch_dtype)
        digest = weights_digest_for(str(model_id), offline)
        return cls(model.to(dev).eval(), str(model_id), dev, dtype, digest)

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": f"PIL bicubic {self.image_size}x{self.image_size}, no crop", "scale": "1/255",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "feature": "pooler_output (CLS)"}

    def encode_images(self, images: Sequence[Any], batch_size: int = 32, show_progress: bool = True) -> Any:
        """CLS features (N, D) float32."""
        import numpy as np
        import torch

        from difflens.console import progress

        feats = []
        chunks = list(batches(list(images), batch_size))
        it = progress(chunks, len(images), "DINOv2") if show_progress else chunks
        with torch.inference_mode():
            for chunk in it:
                x = preprocess(chunk, self.image_size).to(self.device, dtype=self.model.dtype)
                feats.append(self.model(pixel_values=x).pooler_output.float().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, self.model.config.hidden_size), np.float32)

    def image_features(self, images: Sequence[Any], cache: FeatureCache | None = None,
                       digest: str | None = None, batch_size: int = 32) -> Any:
        cache = cache or NoCache()
        key = FeatureKey(
            extractor="dinov2", model_id=self.model_id, weights_digest=self.weights_digest,
            preprocessing=self.preprocessing(), dtype=self.dtype, device_type=self.device.split(":")[0],
            inputs_digest=digest or inputs_digest(list(images)), num_inputs=len(images),
        )
        return cache.get_or_compute(key, lambda: self.encode_images(images, batch_size))


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
