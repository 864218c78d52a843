"""Feature spaces for step distances (interpolation) and pooled features (Mahalanobis OOD).

Three spaces, chosen by name (``--features``):

* ``vae`` (default): the global average of the model's own VAE-encoder feature map at its deepest level
  (``vae.encoder.mid_block`` output; 512-d for the SD/SDXL/SD3/Flux VAEs). Always available offline,
  since the model brings it. It sees image structure as the model's encoder does; it is not a perceptual
  or semantic embedding, so distances are comparable only within one model.
* ``clip``: the L2-normalized image embedding of the metrics mode's CLIP encoder (``--clip-model``: a local
  folder written by ``save_pretrained`` with its processor, or a hub id, looked up only in the local cache
  offline). Distances between unit vectors lie in [0, 2]; comparable across models.
* ``inception``: the 2048-d pool3 features of the metrics mode's FID Inception (torch-fidelity's network);
  weights from ``--inception-weights FILE`` or found (and, online, downloaded) as the metrics mode finds
  them. Not normalized; distances are in FID feature units.

Every space maps [0,1] float images (N, 3, H, W) to float64 features (N, D).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from difflens.errors import DifflensError

FEATURE_SPACES = ("vae", "clip", "inception")


class FeatureSpace(Protocol):
    name: str

    def __call__(self, images: Any) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


class VaeFeatures:
    """Mean-pooled VAE-encoder mid-block features of the pipeline's own VAE (the registry's ``vae``
    extractor, fed the [0,1] float images directly)."""

    name = "vae"

    def __init__(self, pipe: Any, batch_size: int = 8) -> None:
        from difflens.features.registry import get_extractor

        self.extractor = get_extractor("vae", pipe=pipe, batch_size=batch_size)
        self.pipe = pipe
        self.batch_size = batch_size

    def __call__(self, images: Any) -> Any:
        return self.extractor.from_float(images)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "layer": "vae.encoder.mid_block, spatial mean"}


class ClipModel:
    """The registry's ``clip:<model>`` extractor (:class:`difflens.features.clip.Clip`: projected
    embeddings, images preprocessed by the model's own CLIPProcessor), L2-normalized here."""

    def __init__(self, source: str | Path, device: str, offline: bool = False,
                 dtype: str = "float32") -> None:
        from difflens.features.registry import get_extractor

        self.extractor = get_extractor(f"clip:{source}", device=device, dtype=dtype, offline=offline,
                                       flag="--clip-model")
        self.encoder = self.extractor.encoder
        self.source = str(source)

    def image_embeddings(self, images: Any, batch_size: int = 32) -> Any:
        """L2-normalized image embeddings (N, D) float64 of [0,1] images (N, 3, H, W)."""
        from difflens.features.extract import extract
        from difflens.latent.images import to_uint8
        from difflens.metrics.clip import normalize

        out = extract(to_uint8(images), {"clip": self.extractor}, batch_size=batch_size, strict=True)
        return normalize(out.features[("clip", "image_embeds")])

    def text_embeddings(self, texts: list[str]) -> Any:
        """L2-normalized text embeddings (N, D) float64 (texts beyond 77 tokens are truncated)."""
        from difflens.metrics.clip import normalize

        return normalize(self.encoder.encode_texts(list(texts))[0])


class ClipFeatures:
    name = "clip"

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip

    def __call__(self, images: Any) -> Any:
        return self.clip.image_embeddings(images)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.clip.source, "normalized": True}


class InceptionFeatures:
    """The registry's ``inception`` extractor (:class:`difflens.features.inception.Inception`:
    torch-fidelity's network, TF1-exact resize to 299): 2048-d pool3 features."""

    name = "inception"

    def __init__(self, weights: str | Path | None, device: str, offline: bool = False,
                 batch_size: int = 32) -> None:
        from difflens.features.registry import get_extractor

        self.extractor = get_extractor("inception", weights=weights, device=device, offline=offline)
        self.weights = self.extractor.weights
        self.batch_size = batch_size

    def __call__(self, images: Any) -> Any:
        import numpy as np

        from difflens.features.extract import extract
        from difflens.latent.images import to_uint8

        out = extract(to_uint8(images), {"inception": self.extractor}, batch_size=self.batch_size,
                      keep=[("inception", "pool3")], strict=True)
        return out.features[("inception", "pool3")].astype(np.float64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.weights.path), "sha256": self.weights.sha256,
                "random_init": self.weights.random_init, "layer": "pool3 (2048)", "resize": "tf-legacy"}


def make_feature_space(name: str, pipe: Any, *, clip: ClipModel | None = None,
                       inception_weights: str | Path | None = None, device: str = "cpu",
                       offline: bool = False, batch_size: int = 8) -> FeatureSpace:
    """Build a feature space by name; ``clip`` needs a loaded :class:`ClipModel`; ``inception`` finds its
    weights as the metrics mode does. Errors are raised here, before any work or output."""
    if name == "vae":
        return VaeFeatures(pipe, batch_size=batch_size)
    if name == "clip":
        if clip is None:
            raise DifflensError("--features clip needs a CLIP model.", "pass --clip-model DIR")
        return ClipFeatures(clip)
    if name == "inception":
        return InceptionFeatures(inception_weights, device, offline=offline)
    raise DifflensError(f"unknown feature space {name!r}.", f"use one of {', '.join(FEATURE_SPACES)}")
