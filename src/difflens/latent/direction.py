"""Semantic directions in text-embedding space, applied with scales at a fixed seed.

A direction is the mean over prompt pairs of the difference of their text conditioning (every float
tensor the pipeline takes: ``prompt_embeds`` and, where present, ``pooled_prompt_embeds``)::

    v = (1/K) sum_k [E(positive_k) - E(negative_k)]

and the edited conditioning at scale s is ``E(base) + s v`` (prompt-embedding arithmetic; the pipeline
still computes its own negative/empty-prompt embeddings for guidance). Every scale uses the same initial
noise (``--seed``), so at s = 0 the image is exactly ``pipe(base, generator=manual_seed(seed))``.
PixArt keeps the base prompt's attention mask at every scale.

The effect is measured with CLIP: for each scale, the cosine similarity of the image embedding to the
positive prompts (mean over them) and to the negative prompts, and their difference (margin). A working
direction moves the margin up monotonically with the scale; we report whether each sequence is monotone
and Spearman's rank correlation of the margin with the scale.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError


def parse_scales(text: str) -> list[float]:
    """``"-2,-1,0,1,2"`` -> floats; a clear error for anything that is not a finite number."""
    import math

    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise DifflensError("--scales is empty.", "pass comma-separated numbers, e.g. --scales -2,-1,0,1,2")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise DifflensError(f"--scales: {p!r} is not a number.",
                                "pass comma-separated numbers, e.g. --scales -2,-1,0,1,2") from None
        if not math.isfinite(v):
            raise DifflensError(f"--scales: {p!r} is not a finite number.", "pass finite numbers")
        out.append(v)
    return out


def check_pairs(positives: Sequence[str], negatives: Sequence[str]) -> list[tuple[str, str]]:
    if not positives or not negatives:
        raise DifflensError("a direction needs at least one --positive and one --negative prompt.",
                            "pass --positive P --negative N (repeat both for more pairs)")
    if len(positives) != len(negatives):
        raise DifflensError(f"{len(positives)} --positive but {len(negatives)} --negative prompts.",
                            "pass them in pairs: the k-th --positive goes with the k-th --negative")
    return list(zip(positives, negatives, strict=True))


def direction_vector(pipe: Any, pairs: Sequence[tuple[str, str]], settings: Any) -> dict[str, Any]:
    """Mean over pairs of E(positive) - E(negative), per conditioning tensor (float32)."""
    from difflens.latent.generation import encode_text

    total: dict[str, Any] = {}
    for pos, neg in pairs:
        cp, cn = encode_text(pipe, pos, settings), encode_text(pipe, neg, settings)
        for k, v in cp.tensors.items():
            diff = v.float() - cn.tensors[k].float()
            total[k] = diff if k not in total else total[k] + diff
    return {k: v / len(pairs) for k, v in total.items()}


def apply_direction(base: Any, direction: dict[str, Any], scale: float) -> Any:
    """``E(base) + scale * v`` for each tensor; scale 0 returns the base tensors themselves (bit-exact)."""
    from difflens.latent.generation import TextCond

    if scale == 0:
        return base
    return TextCond({k: (v.float() + scale * direction[k]).to(v.dtype) for k, v in base.tensors.items()},
                    dict(base.extras))


@dataclass
class DirectionResult:
    scales: list[float]
    images: list[Any]  # [0,1] tensors (3, H, W), one per scale


def run_direction(pipe: Any, base_prompt: str, pairs: Sequence[tuple[str, str]], scales: Sequence[float],
                  seed: int, settings: Any) -> DirectionResult:
    """One image per scale, all from the same initial noise."""
    from difflens.latent.generation import encode_text, generate, initial_noise

    base = encode_text(pipe, base_prompt, settings)
    vec = direction_vector(pipe, pairs, settings)
    images = []
    for s in scales:
        noise, g = initial_noise(pipe, seed, settings.size)
        images.append(generate(pipe, apply_direction(base, vec, s), noise, g, settings))
    return DirectionResult(list(scales), images)


def _monotone(values: Sequence[float], increasing: bool) -> bool:
    pairs = list(itertools.pairwise(values))
    return all(b >= a for a, b in pairs) if increasing else all(b <= a for a, b in pairs)


def clip_effect(clip: Any, images: Any, scales: Sequence[float], pairs: Sequence[tuple[str, str]]
                ) -> dict[str, Any]:
    """CLIP cosine similarity of each image to the positive and negative prompts, per scale, and whether
    they move monotonically with the scale (sorted ascending)."""
    import numpy as np
    from scipy.stats import spearmanr

    img = clip.image_embeddings(images)
    pos = clip.text_embeddings([p for p, _ in pairs])
    neg = clip.text_embeddings([n for _, n in pairs])
    sim_pos = (img @ pos.T).mean(axis=1)
    sim_neg = (img @ neg.T).mean(axis=1)
    margin = sim_pos - sim_neg
    order = np.argsort(np.asarray(scales), kind="stable")
    sp, sn, mg = sim_pos[order].tolist(), sim_neg[order].tolist(), margin[order].tolist()
    rho = None
    if len(scales) >= 2 and np.ptp(margin) > 0 and np.ptp(np.asarray(scales)) > 0:
        rho = float(spearmanr(np.asarray(scales), margin).statistic)
    return {
        "per_scale": [{"scale": float(s), "clip_positive": float(a), "clip_negative": float(b),
                       "clip_margin": float(a - b)}
                      for s, a, b in zip(scales, sim_pos, sim_neg, strict=True)],
        "monotonic": {"positive_increases": _monotone(sp, True), "negative_decreases": _monotone(sn, False),
                      "margin_increases": _monotone(mg, True), "spearman_margin_vs_scale": rho},
    }
