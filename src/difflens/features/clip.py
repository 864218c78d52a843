"""CLIP as an extractor: the projected image embedding of a transformers ``CLIPModel`` (and its text
embedding, for the CLIP score), under one of two image preprocessings:

* ``processor`` (registry name ``clip[:<model id>]``): the model's own CLIPProcessor (resize the short side
  to the crop size, bicubic, center crop, normalize): the CLIP score's protocol;
* ``cmmd-resize`` (registry name ``clip-cmmd[:<model id>]``): the whole image as float [0, 1], torch bicubic
  resize to the crop size, normalize: google-research/cmmd's protocol.

:class:`ClipEncoder` is the loaded model; :class:`Clip` its :class:`~difflens.features.base.Extractor` face
(layer ``image_embeds``, not normalized). Prompts longer than the text encoder's limit (77 tokens) are
truncated, counted and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.features.base import ExtractorBase, Fingerprint, canonical_preprocessing
from difflens.features.hf_encoder import HFEncoder
from difflens.metrics.config import DEFAULT_CLIP_MODEL
from difflens.metrics.feature_cache import (
    FeatureCache,
    FeatureKey,
    NoCache,
    as_rgb_image,
    batches,
    inputs_digest,
    load_hf_model,
    strings_digest,
)

#: Image preprocessing protocols of :meth:`ClipEncoder.encode_images`.
PROTOCOL_PROCESSOR = "processor"  # CLIPProcessor defaults: short side -> crop size, center crop (CLIP score)
PROTOCOL_CMMD = "cmmd-resize"  # float [0,1], torch bicubic resize of the whole image to crop size (CMMD)


class ClipEncoder(HFEncoder):
    """A transformers ``CLIPModel`` with its ``CLIPProcessor``; embeddings are the projected features
    (``get_image_features`` / ``get_text_features``), not normalized."""

    def __init__(self, model: Any, processor: Any, model_id: str, device: str, dtype: str,
                 weights_digest: str) -> None:
        super().__init__(model, model_id, device, dtype, weights_digest)
        self.processor = processor

    @classmethod
    def load(cls, model_id: str = DEFAULT_CLIP_MODEL, device: str | None = None, dtype: str = "float32",
             offline: bool = False, flag: str = "--clip-model") -> ClipEncoder:
        from transformers import CLIPModel, CLIPProcessor

        model, dev, digest = cls.load_model(CLIPModel, model_id, device, dtype, offline, "CLIP model", flag)
        processor = load_hf_model(CLIPProcessor, model_id, offline, "CLIP processor", flag)
        return cls(model, processor, str(model_id), dev, dtype, digest)

    # ---------------------------------------------------------------------------------------- properties

    @property
    def image_size(self) -> int:
        crop = getattr(self.processor.image_processor, "crop_size", None) or {}
        if not isinstance(crop, int) and crop.get("height"):  # dict, or transformers 5's SizeDict
            return int(crop["height"])
        return int(self.model.config.vision_config.image_size)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def preprocessing(self, protocol: str) -> dict[str, Any]:
        ip = self.processor.image_processor
        spec: dict[str, Any] = {"protocol": protocol, "image_processor": type(ip).__name__,
                                "mean": list(ip.image_mean), "std": list(ip.image_std),
                                "crop": self.image_size}
        if protocol == PROTOCOL_PROCESSOR:
            # transformers 5 stores sizes as SizeDict (iterable of (key, value) pairs, not a dict)
            spec["size"] = ip.size if isinstance(ip.size, (int, type(None))) else dict(ip.size)
            spec["resample"] = int(getattr(ip, "resample", 3) or 3)
        else:
            spec["resize"] = "torch.nn.functional.interpolate bicubic, align_corners=False, float [0,1]"
        return spec

    # ------------------------------------------------------------------------------------------- images

    def pixel_values(self, images: Sequence[Any], protocol: str = PROTOCOL_PROCESSOR) -> Any:
        """The model input for a batch of images under ``protocol``."""
        import numpy as np
        import torch

        pil = [as_rgb_image(im) for im in images]
        ip = self.processor.image_processor
        if protocol == PROTOCOL_PROCESSOR:
            return ip(images=pil, return_tensors="pt")["pixel_values"]
        if protocol != PROTOCOL_CMMD:
            raise ValueError(f"unknown protocol {protocol!r}")
        size = self.image_size
        out = []
        for im in pil:
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            out.append(torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic",
                                                       align_corners=False))
        x = torch.cat(out)
        mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    def embed_batch(self, images: Sequence[Any], protocol: str = PROTOCOL_PROCESSOR) -> Any:
        """Projected embeddings (B, D) float32 of one batch of decoded images (uint8 arrays or PIL)."""
        import torch

        with torch.inference_mode():
            pv = self.pixel_values(images, protocol).to(self.device, dtype=self.model.dtype)
            out = self.model.get_image_features(pixel_values=pv)
            return _tensor(out).float().cpu().numpy()

    def encode_images(self, images: Sequence[Any], protocol: str = PROTOCOL_PROCESSOR,
                      batch_size: int = 32, show_progress: bool = True) -> Any:
        """Projected image embeddings (N, D) float32, not normalized, through the one extraction loop
        (:mod:`difflens.features.extract`; an unreadable file is an error here: callers screen first)."""
        import numpy as np

        from difflens.features.extract import extract

        if len(images) == 0:
            return np.zeros((0, self.model.config.projection_dim), np.float32)
        ext = Clip(self, protocol)
        out = extract(list(images), {ext.name: ext}, batch_size=batch_size, strict=True, label="CLIP images",
                      show_progress=show_progress, description="CLIP images")
        return out.features[(ext.name, "image_embeds")]

    # -------------------------------------------------------------------------------------------- texts

    def tokenize(self, texts: Sequence[str]) -> tuple[dict[str, Any], int]:
        """Tokens padded/truncated to the text encoder's limit, and how many texts were truncated."""
        tok = self.processor.tokenizer
        limit = self.max_text_tokens
        full = tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        truncated = sum(1 for ids in full if len(ids) > limit)
        enc = tok(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return dict(enc), truncated

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> tuple[Any, int]:
        """Projected text embeddings (N, D) float32, not normalized, and the number of truncated texts."""
        import numpy as np
        import torch

        feats, truncated = [], 0
        with torch.inference_mode():
            for chunk in batches(list(texts), batch_size):
                enc, t = self.tokenize(chunk)
                truncated += t
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                feats.append(_tensor(self.model.get_text_features(**enc)).float().cpu().numpy())
        dim = self.model.config.projection_dim
        return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), truncated

    # ---------------------------------------------------------------------------------------- cached

    def image_features(self, images: Sequence[Any], protocol: str, cache: FeatureCache | None = None,
                       digest: str | None = None, batch_size: int = 32) -> Any:
        """``encode_images`` through the feature cache (``digest``: a precomputed input digest)."""
        cache = cache or NoCache()
        key = self.feature_key(protocol, digest or inputs_digest(list(images)), len(images))
        return cache.get_or_compute(key, lambda: self.encode_images(images, protocol, batch_size))

    def feature_key(self, protocol: str, digest: str, n: int) -> FeatureKey:
        """The feature-cache key of the image embeddings of ``n`` inputs with manifest ``digest``."""
        return FeatureKey(
            extractor=f"clip-image-{protocol}", model_id=self.model_id, weights_digest=self.weights_digest,
            preprocessing=self.preprocessing(protocol), dtype=self.dtype,
            device_type=self.device.split(":")[0], inputs_digest=digest, num_inputs=n,
        )

    def text_features(self, texts: Sequence[str], cache: FeatureCache | None = None) -> tuple[Any, int]:
        """``encode_texts`` through the feature cache (each distinct text encoded once): (N, D) embeddings
        in the order of ``texts`` and the number of distinct texts longer than the limit (truncated)."""
        import numpy as np

        cache = cache or NoCache()
        unique = list(dict.fromkeys(texts))
        key = FeatureKey(
            extractor="clip-text", model_id=self.model_id, weights_digest=self.weights_digest,
            preprocessing={"tokenizer": type(self.processor.tokenizer).__name__, "max": self.max_text_tokens},
            dtype=self.dtype, device_type=self.device.split(":")[0], inputs_digest=strings_digest(unique),
            num_inputs=len(unique),
        )
        feats = np.asarray(cache.get_or_compute(key, lambda: self.encode_texts(unique)[0]))
        lengths = self.processor.tokenizer(unique, add_special_tokens=True, truncation=False)["input_ids"]
        truncated = sum(1 for ids in lengths if len(ids) > self.max_text_tokens)
        row = {t: i for i, t in enumerate(unique)}
        return feats[[row[t] for t in texts]], truncated


def _tensor(out: Any) -> Any:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


class Clip(ExtractorBase):
    """The :class:`~difflens.features.base.Extractor` over a :class:`ClipEncoder` under one protocol.

    ``forward`` runs the encoder's own batch preprocessing on the decoded batch, so features equal
    :meth:`ClipEncoder.encode_images` for the same batches."""

    layers = ("image_embeds",)

    def __init__(self, encoder: ClipEncoder, protocol: str = PROTOCOL_PROCESSOR) -> None:
        if protocol not in (PROTOCOL_PROCESSOR, PROTOCOL_CMMD):
            from difflens.errors import DifflensError

            raise DifflensError(f"unknown CLIP preprocessing {protocol!r}.",
                                f"use {PROTOCOL_PROCESSOR} or {PROTOCOL_CMMD}")
        self.encoder = encoder
        self.protocol = protocol
        self.device = encoder.device
        prefix = "clip" if protocol == PROTOCOL_PROCESSOR else "clip-cmmd"
        self.name = f"{prefix}:{encoder.model_id}"

    def preprocessing(self) -> dict[str, Any]:
        return self.encoder.preprocessing(self.protocol)

    def fingerprint(self, layer: str = "image_embeds") -> Fingerprint:
        self.check_layer(layer)
        return Fingerprint(protocol=self.protocol, weights_sha256=self.encoder.weights_digest,
                           extractor=f"transformers CLIPModel {self.encoder.model_id}",
                           feature_layer="image_embeds (projected)", dtype=self.encoder.dtype,
                           preprocessing=canonical_preprocessing(self.preprocessing()))

    def forward(self, prepared: Sequence[Any]) -> dict[str, Any]:
        return {"image_embeds": self.encoder.embed_batch(prepared, self.protocol)}

    def cache_key(self, digest: str, n: int) -> FeatureKey:
        """The feature-cache key of this extractor's features of ``n`` inputs (manifest ``digest``)."""
        return self.encoder.feature_key(self.protocol, digest, n)


def load_clip(model_id: str | None = None, protocol: str = PROTOCOL_PROCESSOR, device: str | None = None,
              dtype: str = "float32", offline: bool = False, flag: str = "--clip-model",
              encoder: ClipEncoder | None = None) -> Clip:
    """Registry factory: load ``model_id`` (default :data:`DEFAULT_CLIP_MODEL`; a local folder or a hub id),
    or wrap an already loaded ``encoder`` (so CLIP score and CMMD share one model)."""
    enc = encoder or ClipEncoder.load(model_id or DEFAULT_CLIP_MODEL, device=device, dtype=dtype,
                                      offline=offline, flag=flag)
    return Clip(enc, protocol)
