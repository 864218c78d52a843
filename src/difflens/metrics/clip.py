"""CLIP embeddings, CLIP score and the per-prompt breakdown.

CLIP score (Hessel et al. 2021, as torchmetrics computes it): for each (image, prompt) pair,
``100 * max(cos(E_img, E_txt), 0)`` with E the projected CLIP embeddings, averaged over pairs. Images are
preprocessed by the model's own CLIPProcessor (resize the short side to the crop size, bicubic, center
crop, normalize); prompts are tokenized to the text encoder's limit (77 tokens); longer prompts are
truncated, counted and reported.

The same encoder serves CMMD (:mod:`difflens.metrics.cmmd`) with the CMMD protocol: the whole image
resized (bicubic, no crop) to the crop size, as google-research/cmmd does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    strings_digest,
    weights_digest_for,
)

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"

#: Image preprocessing protocols of :meth:`ClipEncoder.encode_images`.
PROTOCOL_PROCESSOR = "processor"  # CLIPProcessor defaults: short side -> crop size, center crop (CLIP score)
PROTOCOL_CMMD = "cmmd-resize"  # float [0,1], torch bicubic resize of the whole image to crop size (CMMD)


class ClipEncoder:
    """A transformers ``CLIPModel`` with its ``CLIPProcessor``; embeddings are the projected features
    (``get_image_features`` / ``get_text_features``), not normalized."""

    def __init__(self, model: Any, processor: Any, model_id: str, device: str, dtype: str,
                 weights_digest: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.weights_digest = weights_digest

    @classmethod
    def load(cls, model_id: str = DEFAULT_CLIP_MODEL, device: str | None = None, dtype: str = "float32",
             offline: bool = False, flag: str = "--clip-model") -> ClipEncoder:
        from transformers import CLIPModel, CLIPProcessor

        from difflens.models import resolve_device, resolve_dtype

        torch_dtype = resolve_dtype(dtype)
        dev = resolve_device(device)
        model = load_hf_model(CLIPModel, model_id, offline, "CLIP model", flag, dtype=torch_dtype)
        processor = load_hf_model(CLIPProcessor, model_id, offline, "CLIP processor", flag)
        model = model.to(dev).eval()
        return cls(model, processor, str(model_id), dev, dtype, weights_digest_for(str(model_id), offline))

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

    def encode_images(self, images: Sequence[Any], protocol: str = PROTOCOL_PROCESSOR,
                      batch_size: int = 32, show_progress: bool = True) -> Any:
        """Projected image embeddings (N, D) float32, not normalized."""
        import numpy as np
        import torch

        from difflens.console import progress

        feats = []
        chunks = list(batches(list(images), batch_size))
        it = progress(chunks, len(images), "CLIP images") if show_progress else chunks
        with torch.inference_mode():
            for chunk in it:
                pv = self.pixel_values(chunk, protocol).to(self.device, dtype=self.model.dtype)
                out = self.model.get_image_features(pixel_values=pv)
                feats.append(_tensor(out).float().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, self.model.config.projection_dim), np.float32)

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
        key = FeatureKey(
            extractor=f"clip-image-{protocol}", model_id=self.model_id, weights_digest=self.weights_digest,
            preprocessing=self.preprocessing(protocol), dtype=self.dtype,
            device_type=self.device.split(":")[0], inputs_digest=digest or inputs_digest(list(images)),
            num_inputs=len(images),
        )
        return cache.get_or_compute(key, lambda: self.encode_images(images, protocol, batch_size))

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


# ------------------------------------------------------------------------------------------------ math


def normalize(x: Any) -> Any:
    """Rows scaled to unit L2 norm, float64."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_scores(image_embeds: Any, text_embeds: Any) -> Any:
    """Per-pair CLIP score: ``100 * max(cos(image_i, text_i), 0)``, float64 (N,)."""
    import numpy as np

    a, b = normalize(image_embeds), normalize(text_embeds)
    if a.shape != b.shape:
        raise DifflensError(f"{a.shape[0]} images but {b.shape[0]} prompts.",
                            "give one prompt per image (or a manifest)")
    return 100.0 * np.maximum((a * b).sum(axis=1), 0.0)


@dataclass
class PromptScore:
    prompt: str
    count: int
    clip_score: float


@dataclass
class PerPromptBreakdown:
    """CLIP score per distinct prompt; ``sum(count * clip_score) / sum(count)`` equals the overall score."""

    overall: float
    prompts: list[PromptScore] = field(default_factory=list)
    lowest: list[PromptScore] = field(default_factory=list)

    def weighted_mean(self) -> float:
        n = sum(p.count for p in self.prompts)
        return sum(p.count * p.clip_score for p in self.prompts) / n if n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall,
                "prompts": [vars(p) for p in self.prompts],
                "lowest": [vars(p) for p in self.lowest]}


def per_prompt_breakdown(prompts: Sequence[str], scores: Any, lowest: int = 10) -> PerPromptBreakdown:
    """Mean CLIP score per distinct prompt (first-seen order) and the ``lowest`` worst-aligned prompts."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    if len(prompts) != len(scores):
        raise ValueError("one prompt per score")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    rows = [PromptScore(p, len(idx), float(scores[idx].mean())) for p, idx in groups.items()]
    worst = sorted(rows, key=lambda r: (r.clip_score, r.prompt))[:max(0, lowest)]
    return PerPromptBreakdown(overall=float(scores.mean()) if len(scores) else float("nan"),
                              prompts=rows, lowest=worst)


def bootstrap_mean_ci(values: Any, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over ``n_boot`` resamples (with replacement) of the pairs."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    means = [values[idx].mean() for idx in resample_indices(len(values), n_boot, seed)]
    return percentile_ci95(means)


# ------------------------------------------------------------------------------------------------ API


@dataclass
class ClipScoreResult:
    value: float
    n: int
    per_sample: Any
    truncated_prompts: int
    ci95: tuple[float, float] | None = None
    per_prompt: PerPromptBreakdown | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "n": self.n, "n_fake": self.n,
                               "truncated_prompts": self.truncated_prompts}
        if self.ci95 is not None:
            out["ci95"] = list(self.ci95)
        return out


def compute_clip_score(images: Sequence[Any], prompts: Sequence[str], *,
                       clip_model: str = DEFAULT_CLIP_MODEL, encoder: ClipEncoder | None = None,
                       device: str | None = None, dtype: str = "float32", offline: bool = False,
                       cache: FeatureCache | None = None, images_digest: str | None = None,
                       batch_size: int = 32, per_prompt: bool = False, lowest: int = 10, bootstrap: int = 0,
                       seed: int = 0) -> ClipScoreResult:
    """CLIP score of ``images[i]`` against ``prompts[i]`` (paths, PIL images or uint8 arrays).

    ``bootstrap`` > 0 adds a 95% interval from resampling the (image, prompt) pairs.
    """
    if len(images) != len(prompts):
        raise DifflensError(f"{len(images)} images but {len(prompts)} prompts for the CLIP score.",
                            "give one prompt per image, or use a generation folder with a manifest")
    if len(images) == 0:
        raise DifflensError("no images for the CLIP score.", "pass a folder with images")
    enc = encoder or ClipEncoder.load(clip_model, device=device, dtype=dtype, offline=offline)
    img = enc.image_features(images, PROTOCOL_PROCESSOR, cache, images_digest, batch_size)
    txt, truncated = enc.text_features(list(prompts), cache)
    scores = clip_scores(img, txt)
    result = ClipScoreResult(value=float(scores.mean()), n=len(scores), per_sample=scores,
                             truncated_prompts=truncated)
    if bootstrap > 0:
        result.ci95 = bootstrap_mean_ci(scores, bootstrap, seed)
    if per_prompt:
        result.per_prompt = per_prompt_breakdown(list(prompts), scores, lowest)
    return result


def render_per_prompt(breakdown: dict[str, Any], console: Any = None, limit: int = 10) -> None:
    """Print the lowest-aligned prompts of a per-prompt breakdown (``result["per_prompt"]``)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = console or Console()
    title = f"lowest CLIP score prompts (overall {breakdown['overall']:.4g})"
    table = Table(title=title, title_justify="left")
    table.add_column("CLIP score", justify="right")
    table.add_column("n", justify="right")
    table.add_column("prompt")
    for row in breakdown["lowest"][:limit]:
        table.add_row(f"{row['clip_score']:.4g}", str(row["count"]), escape(row["prompt"][:100]))
    out.print(table)
