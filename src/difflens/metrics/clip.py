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
from difflens.features.clip import PROTOCOL_CMMD, PROTOCOL_PROCESSOR, ClipEncoder
from difflens.metrics.config import DEFAULT_CLIP_MODEL
from difflens.metrics.feature_cache import FeatureCache, percentile_ci95, resample_indices

__all__ = ["DEFAULT_CLIP_MODEL", "PROTOCOL_CMMD", "PROTOCOL_PROCESSOR", "ClipEncoder", "ClipScoreResult",
           "PerPromptBreakdown", "PromptScore", "bootstrap_mean_ci", "clip_scores", "compute_clip_score",
           "normalize", "per_prompt_breakdown", "render_per_prompt"]

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
