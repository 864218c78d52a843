"""The latent mode's settings, one frozen typed config per command: the single source of the defaults
of ``difflens latent encode|interpolate|direction|ood``, of :mod:`difflens.latent.api` and of the
``[latent]`` table of ``analysis.toml``. Light at import (the CLI reads it while building its options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from difflens.config import RUNTIME
from difflens.latent.ood import DEFAULT_LEVELS, MIN_REFERENCE
from difflens.metrics.config import DEFAULT_CLIP_MODEL

__all__ = ["DirectionConfig", "EncodeConfig", "FeatureSpace", "InterpolateConfig", "Method", "OodConfig"]

#: Interpolation of initial noise / latents: slerp keeps the Gaussian norm, lerp does not.
Method = Literal["slerp", "lerp"]
#: Feature space of distances and of the Mahalanobis OOD score.
FeatureSpace = Literal["vae", "clip", "inception"]

_BATCH = 8  # images per VAE / feature / reconstruction batch


@dataclass(frozen=True)
class EncodeConfig:
    batch_size: int = _BATCH
    strict: bool = RUNTIME.strict


@dataclass(frozen=True)
class InterpolateConfig:
    frames: int = 8  # both ends included
    method: Method = "slerp"
    steps: int = 25
    guidance: float | None = None  # None: the pipeline's
    size: int | None = None  # None: the model's own size
    max_sequence_length: int | None = None
    features: FeatureSpace = "vae"
    clip_model: str | None = None  # None: DEFAULT_CLIP_MODEL
    batch_size: int = _BATCH


@dataclass(frozen=True)
class DirectionConfig:
    scales: str = "-2,-1,0,1,2"
    seed: int = RUNTIME.seed
    steps: int = 25
    guidance: float | None = None
    size: int | None = None
    max_sequence_length: int | None = None
    clip_model: str | None = DEFAULT_CLIP_MODEL  # None (CLI: "none") skips the measurement


@dataclass(frozen=True)
class OodConfig:
    methods: str = "all"  # a comma list of latent.ood.METHODS, or all
    features: FeatureSpace = "vae"
    clip_model: str | None = None  # None: DEFAULT_CLIP_MODEL
    noise_levels: str = ",".join(f"{x:g}" for x in DEFAULT_LEVELS)  # img2img strengths in (0, 1]
    steps: int = 20
    seed: int = RUNTIME.seed
    min_reference: int = MIN_REFERENCE
    size: int | None = None
    max_sequence_length: int | None = None
    batch_size: int = _BATCH
    strict: bool = RUNTIME.strict
