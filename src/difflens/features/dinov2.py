"""DINOv2 as an extractor (FD-DINOv2, Stein et al. 2023): the CLS token of a transformers ``Dinov2Model``
after the final layer norm (``pooler_output``; torch hub's ``x_norm_clstoken``), 1024-d for ViT-L/14.

Preprocessing follows dgm-eval: PIL bicubic resize of the whole image to 224 x 224 (no crop), scale to
[0, 1], ImageNet mean/std normalization. Registry name ``dinov2[:<model id>]``, layer ``cls``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.features.base import ExtractorBase, Fingerprint, canonical_preprocessing
from difflens.features.hf_encoder import HFEncoder
from difflens.metrics.config import DEFAULT_DINOV2_MODEL
from difflens.metrics.feature_cache import (
    FeatureCache,
    FeatureKey,
    NoCache,
    as_rgb_image,
    inputs_digest,
)

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


class Dinov2Encoder(HFEncoder):
    """A transformers ``Dinov2Model``; features are CLS tokens after the final layer norm."""

    def __init__(self, model: Any, model_id: str, device: str, dtype: str, weights_digest: str,
                 image_size: int = IMAGE_SIZE) -> None:
        super().__init__(model, model_id, device, dtype, weights_digest)
        self.image_size = image_size

    @classmethod
    def load(cls, model_id: str = DEFAULT_DINOV2_MODEL, device: str | None = None, dtype: str = "float32",
             offline: bool = False) -> Dinov2Encoder:
        from transformers import Dinov2Model

        model, dev, digest = cls.load_model(Dinov2Model, model_id, device, dtype, offline, "DINOv2 model",
                                            "--dinov2-model")
        return cls(model, str(model_id), dev, dtype, digest)

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": f"PIL bicubic {self.image_size}x{self.image_size}, no crop", "scale": "1/255",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "feature": "pooler_output (CLS)"}

    def embed_batch(self, images: Sequence[Any]) -> Any:
        """CLS features (B, D) float32 of one batch of decoded images (uint8 arrays or PIL)."""
        import torch

        with torch.inference_mode():
            x = preprocess(images, self.image_size).to(self.device, dtype=self.model.dtype)
            return self.model(pixel_values=x).pooler_output.float().cpu().numpy()

    def encode_images(self, images: Sequence[Any], batch_size: int = 32, show_progress: bool = True) -> Any:
        """CLS features (N, D) float32, through the one extraction loop (:mod:`difflens.features.extract`)."""
        import numpy as np

        from difflens.features.extract import extract

        if len(images) == 0:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        ext = Dinov2(self)
        out = extract(list(images), {ext.name: ext}, batch_size=batch_size, strict=True, label="DINOv2",
                      show_progress=show_progress, description="DINOv2")
        return out.features[(ext.name, "cls")]

    def image_features(self, images: Sequence[Any], cache: FeatureCache | None = None,
                       digest: str | None = None, batch_size: int = 32) -> Any:
        cache = cache or NoCache()
        key = self.feature_key(digest or inputs_digest(list(images)), len(images))
        return cache.get_or_compute(key, lambda: self.encode_images(images, batch_size))

    def feature_key(self, digest: str, n: int) -> FeatureKey:
        """The feature-cache key of the CLS features of ``n`` inputs with manifest ``digest``."""
        return FeatureKey(
            extractor="dinov2", model_id=self.model_id, weights_digest=self.weights_digest,
            preprocessing=self.preprocessing(), dtype=self.dtype, device_type=self.device.split(":")[0],
            inputs_digest=digest, num_inputs=n,
        )


class Dinov2(ExtractorBase):
    """The :class:`~difflens.features.base.Extractor` over a :class:`Dinov2Encoder` (layer ``cls``)."""

    layers = ("cls",)

    def __init__(self, encoder: Dinov2Encoder) -> None:
        self.encoder = encoder
        self.device = encoder.device
        self.name = f"dinov2:{encoder.model_id}"

    def preprocessing(self) -> dict[str, Any]:
        return self.encoder.preprocessing()

    def fingerprint(self, layer: str = "cls") -> Fingerprint:
        self.check_layer(layer)
        return Fingerprint(protocol="dinov2-bicubic", weights_sha256=self.encoder.weights_digest,
                           extractor=f"transformers Dinov2Model {self.encoder.model_id}",
                           feature_layer="pooler_output (CLS)", dtype=self.encoder.dtype,
                           preprocessing=canonical_preprocessing(self.preprocessing()))

    def forward(self, prepared: Sequence[Any]) -> dict[str, Any]:
        return {"cls": self.encoder.embed_batch(prepared)}

    def cache_key(self, digest: str, n: int) -> FeatureKey:
        """The feature-cache key of this extractor's features of ``n`` inputs (manifest ``digest``)."""
        return self.encoder.feature_key(digest, n)


def load_dinov2(model_id: str | None = None, device: str | None = None, dtype: str = "float32",
                offline: bool = False) -> Dinov2:
    """Registry factory: load ``model_id`` (default :data:`DEFAULT_DINOV2_MODEL`)."""
    return Dinov2(Dinov2Encoder.load(model_id or DEFAULT_DINOV2_MODEL, device=device, dtype=dtype,
                                     offline=offline))
