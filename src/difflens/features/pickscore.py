"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"; github.com/yuvalkirstain/PickScore) as a prompted
extractor: a transformers ``CLIPModel`` with the PickScore weights (``yuvalkirstain/PickScore_v1`` by
default, or a local ``save_pretrained`` folder), and the processor of the model card
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; a folder that carries its own tokenizer uses its own).

Score, as the model card computes it: ``logit_scale.exp() * cos(E_txt, E_img)`` with E the projected
embeddings (``get_text_features`` / ``get_image_features``, L2-normalized). Layer ``score`` is ``(N, 1)``
float32. The softmax over the images that share a prompt (the model card's ``probs``) is the metric's
(:mod:`difflens.metrics.pickscore`).

Preprocessing: the model card ran transformers 4.27, whose ``CLIPImageProcessor`` resized with PIL;
transformers 5's default CLIP processor resizes with torchvision tensors instead (different pixels). difflens
keeps the published PIL processing, reading sizes and mean/std from the processor's config: PIL bicubic
resize of the shorter side to ``size["shortest_edge"]`` (the longer to ``int(size * long / short)``),
centre crop to ``crop_size`` (offsets ``(side - crop) // 2``), ``x * (1/255)`` (float64, then float32),
``(x - mean) / std`` in float32 — transformers 5's ``backend="pil"`` processor gives the same pixels.
Text: the processor's CLIP tokenizer, padded, truncated to 77 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.features.base import ExtractorBase, Fingerprint, canonical_preprocessing
from difflens.features.prompted import autocast, batch_prompts, check_dtype
from difflens.metrics.config import DEFAULT_PICKSCORE_MODEL, DEFAULT_PICKSCORE_PROCESSOR

FLAG = "--pickscore-model"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def processor_for(model_id: str) -> str:
    """The processor the model card pairs with ``model_id``: a folder's own when it has a tokenizer,
    else :data:`DEFAULT_PICKSCORE_PROCESSOR`."""
    path = Path(model_id).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in _TOKENIZER_FILES):
        return str(path)
    return DEFAULT_PICKSCORE_PROCESSOR


def _size(value: Any, key: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(dict(value)[key]) if dict(value).get(key) is not None else None
    except (TypeError, ValueError):
        return None


def clip_pil_pixels(image: Any, shortest: int, crop: tuple[int, int], mean: Sequence[float],
                    std: Sequence[float]) -> Any:
    """The transformers-4 ``CLIPImageProcessor`` of one uint8 (H, W, 3) image: (3, crop_h, crop_w) float32."""
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(shortest * long / short)
    oh, ow = (shortest, new_long) if h <= w else (new_long, shortest)
    arr = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((ow, oh), Image.Resampling.BICUBIC))
    ch, cw = crop
    if oh < ch or ow < cw:  # transformers pads with zeros around a too-small image before cropping
        ph, pw = max(ch, oh), max(cw, ow)
        padded = np.zeros((ph, pw, 3), arr.dtype)
        top, left = (ph - oh) // 2, (pw - ow) // 2
        padded[top:top + oh, left:left + ow] = arr
        arr, oh, ow = padded, ph, pw
    top, left = (oh - ch) // 2, (ow - cw) // 2
    arr = arr[top:top + ch, left:left + cw]
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _tensor(out: Any) -> Any:
    """``get_*_features`` gives a tensor (transformers 4) or an output object (5: ``pooler_output``)."""
    from difflens.features.clip import _tensor as as_tensor

    return as_tensor(out)


class PickScore(ExtractorBase):
    """PickScore of each image against its prompt: layer ``score`` = logit_scale.exp() * cos."""

    prompted = True
    needs_prepare = True
    layers = ("score",)

    def __init__(self, model: Any, processor: Any, *, model_id: str, processor_id: str, weights_sha256: str,
                 device: str, dtype: str = "float32") -> None:
        self.model, self.processor = model, processor
        self.model_id, self.processor_id, self.sha256 = model_id, processor_id, weights_sha256
        self.device, self.dtype = device, dtype
        ip = processor.image_processor
        self.shortest = _size(ip.size, "shortest_edge") or int(model.config.vision_config.image_size)
        crop = ip.crop_size
        self.crop = (_size(crop, "height") or self.shortest, _size(crop, "width") or self.shortest)
        self.mean = tuple(float(v) for v in ip.image_mean)
        self.std = tuple(float(v) for v in ip.image_std)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)
        self.name = "pickscore"

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "PIL bicubic, shorter side (transformers 4 CLIPImageProcessor)",
                "shortest_edge": self.shortest, "crop": list(self.crop), "rescale": "x * (1/255)",
                "mean": list(self.mean), "std": list(self.std), "processor": self.processor_id,
                "max_tokens": self.max_tokens}

    def fingerprint(self, layer: str = "score") -> Fingerprint:
        self.check_layer(layer)
        return Fingerprint(protocol="pickscore-clip-pil", weights_sha256=self.sha256,
                           extractor=f"PickScore (transformers CLIPModel {self.model_id})",
                           feature_layer="score = logit_scale.exp() * cos(text, image)", dtype=self.dtype,
                           preprocessing=canonical_preprocessing(self.preprocessing()))

    def prepare(self, image: Any) -> Any:
        return clip_pil_pixels(image, self.shortest, self.crop, self.mean, self.std)

    def forward(self, prepared: Sequence[Any], prompts: Sequence[str] | None = None) -> dict[str, Any]:
        import numpy as np
        import torch

        prompts = batch_prompts("pickscore", len(prepared), prompts)
        pixels = torch.from_numpy(np.stack(list(prepared))).to(self.device)
        unique = list(dict.fromkeys(prompts))
        enc = self.processor.tokenizer(unique, padding=True, truncation=True, max_length=self.max_tokens,
                                       return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode(), autocast(self.device, self.dtype):
            img = _tensor(self.model.get_image_features(pixel_values=pixels)).float()
            txt = _tensor(self.model.get_text_features(**enc)).float()
            img = img / torch.norm(img, dim=-1, keepdim=True)
            txt = txt / torch.norm(txt, dim=-1, keepdim=True)
            row = {p: i for i, p in enumerate(unique)}
            txt = txt[torch.tensor([row[p] for p in prompts], device=txt.device)]
            score = self.model.logit_scale.float().exp() * (img * txt).sum(dim=-1)
        return {"score": score.cpu().numpy().astype("float32")[:, None]}


def _sha256(model_id: str, offline: bool) -> str:
    from difflens.metrics.feature_cache import weights_digest_for

    return weights_digest_for(model_id, offline)


def load_pickscore(model_id: str = DEFAULT_PICKSCORE_MODEL, processor: str | None = None,
                   device: str | None = None, dtype: str = "float32", offline: bool = False) -> PickScore:
    """Build the PickScore extractor from a hub id or a ``save_pretrained`` folder (offline: the local
    folder or the Hugging Face cache only); the SHA-256 of its weight files goes into the fingerprint."""
    check_dtype("pickscore", dtype)
    path = Path(model_id).expanduser()
    if (model_id.startswith((".", "/", "~")) or path.exists()) and not (path / "config.json").is_file():
        raise DifflensError(f"{FLAG} {model_id}: not a transformers model folder (no config.json).",
                            "pass a CLIPModel save_pretrained folder or a hub id such as "
                            f"{DEFAULT_PICKSCORE_MODEL}")
    if (path / "config.json").is_file():
        import json

        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if cfg.get("model_type") != "clip":
            raise DifflensError(f"{FLAG} {model_id} is a {cfg.get('model_type')!r} model, not a CLIPModel.",
                                f"pass a CLIP model folder (PickScore: {DEFAULT_PICKSCORE_MODEL})")
    from transformers import CLIPModel, CLIPProcessor

    from difflens.metrics.feature_cache import load_hf_model
    from difflens.models import resolve_device

    proc_id = processor or processor_for(model_id)
    model = _load_strict(CLIPModel, model_id, offline)
    proc = load_hf_model(CLIPProcessor, proc_id, offline, "PickScore processor", FLAG)
    dev = resolve_device(device)
    return PickScore(model.to(dev).eval(), proc, model_id=str(model_id), processor_id=str(proc_id),
                     weights_sha256=_sha256(str(model_id), offline), device=dev, dtype=dtype)


def _load_strict(cls: Any, model_id: str, offline: bool) -> Any:
    """``CLIPModel.from_pretrained`` with its loading report: a missing or unexpected weight (a checkpoint
    of another architecture, left randomly initialized by transformers) is one DifflensError."""
    from difflens.metrics.feature_cache import load_hf_model

    try:
        model, info = load_hf_model(cls, model_id, offline, "PickScore model", FLAG, output_loading_info=True)
    except RuntimeError:  # transformers refuses weights whose shapes differ from the config's
        raise DifflensError(f"{FLAG} {model_id}: weight shapes do not match its config.json.",
                            f"pass the PickScore CLIPModel folder or hub id ({DEFAULT_PICKSCORE_MODEL})"
                            ) from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith("position_ids")]
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        parts = [f"{len(v)} {what} ({', '.join(map(str, v[:3]))}{', ...' if len(v) > 3 else ''})"
                 for what, v in (("missing weights", missing), ("unexpected weights", unexpected),
                                 ("shape mismatches", mismatched)) if v]
        raise DifflensError(f"{FLAG} {model_id} does not hold a complete CLIPModel: {'; '.join(parts)}.",
                            f"pass the PickScore CLIPModel folder or hub id ({DEFAULT_PICKSCORE_MODEL})")
    return model
