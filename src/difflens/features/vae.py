"""The model's own VAE as an extractor: the global average of its encoder's deepest feature map
(``vae.encoder.mid_block`` output; 512-d for the SD/SDXL/SD3/Flux VAEs), computed in the same pass as the
latents by :func:`difflens.latent.vae.encode_images` (posterior mode, deterministic).

Registry name ``vae`` (needs ``pipe=``, a loaded diffusers pipeline); layer ``mid``. It sees image structure
as the model's encoder does; distances are comparable only within one model. uint8 images are mapped to
[0, 1] (``x / 255``); :meth:`Vae.from_float` takes [0, 1] float images as the latent mode has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.errors import DifflensError
from difflens.features.base import ExtractorBase, Fingerprint, canonical_preprocessing


class Vae(ExtractorBase):
    """Mean-pooled VAE-encoder mid-block features of a pipeline's VAE (float64 from the model, returned as
    float32 by :meth:`forward`, float64 by :meth:`from_float`)."""

    name = "vae"
    layers = ("mid",)

    def __init__(self, pipe: Any, batch_size: int = 8) -> None:
        if pipe is None:
            raise DifflensError("the vae extractor needs the model's pipeline.",
                                "load the model first and pass it: get_extractor('vae', pipe=pipe)")
        self.pipe = pipe
        self.batch_size = batch_size
        self.device = str(getattr(pipe, "device", "cpu"))

    def preprocessing(self) -> dict[str, Any]:
        return {"scale": "x/255 -> [0,1], then 2x-1", "resize": "none", "pool": "spatial mean"}

    def fingerprint(self, layer: str = "mid") -> Fingerprint:
        self.check_layer(layer)
        vae = getattr(self.pipe, "vae", None)
        cfg = dict(getattr(vae, "config", {}) or {})
        ident = getattr(self.pipe, "name_or_path", None) or cfg.get("_name_or_path") or type(vae).__name__
        return Fingerprint(protocol="vae-identity", weights_sha256=str(cfg.get("_weights_sha256", "")),
                           extractor=f"diffusers {type(vae).__name__} {ident}",
                           feature_layer="vae.encoder.mid_block, spatial mean",
                           dtype=str(getattr(vae, "dtype", "float32")).replace("torch.", ""),
                           preprocessing=canonical_preprocessing(self.preprocessing()))

    def from_float(self, images: Any) -> Any:
        """Features (N, D) float64 of [0, 1] float images (N, 3, H, W) (a torch tensor)."""
        from difflens.latent.vae import encode_images

        return encode_images(self.pipe, images, batch_size=self.batch_size, with_features=True)[1]

    def forward(self, prepared: Sequence[Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        shapes = {im.shape for im in prepared}
        if len(shapes) > 1:
            raise DifflensError(f"the vae extractor needs images of one size, got {sorted(shapes)}.",
                                "resize the images to one size first")
        x = torch.from_numpy(np.stack(prepared)).permute(0, 3, 1, 2).float() / 255.0
        return {"mid": np.asarray(self.from_float(x), dtype=np.float32)}


def load_vae(pipe: Any = None, batch_size: int = 8) -> Vae:
    """Registry factory: the ``vae`` extractor of ``pipe``."""
    return Vae(pipe, batch_size=batch_size)
