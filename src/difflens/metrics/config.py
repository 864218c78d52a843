"""The metrics mode's settings: frozen, typed, the single source of its defaults.

``difflens metrics`` (its typer options), :func:`difflens.metrics.api.compute_metrics`,
:func:`difflens.metrics.evaluate.evaluate` and the ``[metrics]`` table of ``analysis.toml`` take their
defaults from these classes. Standard library only at import (the CLI reads it while building its options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from difflens.config import RUNTIME, Dtype
from difflens.errors import DifflensError

__all__ = ["DEFAULT_CLIP_MODEL", "DEFAULT_CMMD_CLIP_MODEL", "DEFAULT_DINOV2_MODEL", "DEFAULT_FD_CLIP_MODEL",
           "DEFAULT_FID_INF_MIN_FAKE", "DEFAULT_FID_INF_POINTS", "DEFAULT_SEED", "DEFAULT_VENDI_EXTRACTOR",
           "DEFAULT_VENDI_LAYER", "DEFAULT_VENDI_Q",
           "DatasetOptions", "EmbeddingConfig", "GenerationRequest", "MetricsConfig", "Protocol"]

#: Inception resize protocols: ``tf-legacy`` (torch-fidelity's TF1-exact bilinear) or ``clean`` (clean-fid's
#: PIL bicubic). :data:`difflens.features.base.PROTOCOLS` lists the same names (a test checks).
Protocol = Literal["tf-legacy", "clean"]
#: Inception implementations (difflens.metrics.inception_fast): ``reference`` (default: torch-fidelity's
#: module as is, bit-identical features) or ``fast`` (batch-norm folded into the convolutions,
#: channels-last; features within 1e-6 of the feature scale, FID within about 1e-6 relative).
InceptionImpl = Literal["fast", "reference"]

DEFAULT_SEED = 2020  # torch-fidelity's default rng_seed: same KID subsets and IS split order
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # CLIP score (and the latent mode's CLIP features)
DEFAULT_CMMD_CLIP_MODEL = "openai/clip-vit-large-patch14-336"  # google-research/cmmd's model
DEFAULT_DINOV2_MODEL = "facebook/dinov2-large"  # FD-DINOv2 (Stein et al. 2023: ViT-L/14)
#: hpsv2: open_clip architecture of the HPS checkpoints and the version (2.1: the current leaderboard)
HpsVersion = Literal["2.0", "2.1"]
DEFAULT_HPSV2_ARCH = "ViT-H-14"
DEFAULT_HPSV2_VERSION: HpsVersion = "2.1"
#: pickscore (Kirstain et al. 2023): the model card's model and processor
DEFAULT_PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: imagereward (Xu et al. 2023): ImageReward.pt of this hub repository when no checkpoint file is given, and
#: the tokenizer (bert-base-uncased, to which BLIP adds [DEC] and [ENC])
DEFAULT_IMAGEREWARD_REPO = "THUDM/ImageReward"
DEFAULT_IMAGEREWARD_TOKENIZER = "bert-base-uncased"
DEFAULT_FD_CLIP_MODEL = "openai/clip-vit-base-patch32"  # fd-clip: clean-fid's CLIP-FID uses ViT-B/32
#: fid-inf (Chong & Forsyth 2020): FID at ``points`` sample sizes evenly spaced from ``min_fake`` to all the
#: generated images (FID_IS_infinity score_infinity.py:117, calculate_FID_infinity_path defaults)
DEFAULT_FID_INF_MIN_FAKE = 5000
DEFAULT_FID_INF_POINTS = 15
#: vendi (Friedman & Dieng 2023): order q of the entropy (1: Shannon, the paper's score), on these features
DEFAULT_VENDI_Q = 1.0
DEFAULT_VENDI_EXTRACTOR = "inception"
DEFAULT_VENDI_LAYER = "pool3"


@dataclass(frozen=True)
class MetricsConfig:
    """Every setting that changes an Inception metric value (recorded in ``protocol.settings``)."""

    metrics: tuple[str, ...] | None = None  # None: every metric the inputs allow
    protocol: Protocol = "tf-legacy"
    inception_impl: InceptionImpl = "reference"
    batch_size: int = 50
    seed: int = DEFAULT_SEED  # KID subsets, IS split order, bootstrap resampling (embedding metrics too)
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    is_splits: int = 10
    k_pr: int = 3
    k_dc: int = 5
    bootstrap: int = 0
    strict: bool = RUNTIME.strict
    allow_protocol_mismatch: bool = False

    def validate(self) -> None:
        from difflens.features.base import PROTOCOLS

        if self.protocol not in PROTOCOLS:
            raise DifflensError(f"unknown --protocol {self.protocol!r}.",
                                f"use one of {', '.join(PROTOCOLS)}")
        if self.inception_impl not in ("fast", "reference"):
            raise DifflensError(f"unknown --inception-impl {self.inception_impl!r}.",
                                "use fast or reference")
        checks = (("--batch-size", self.batch_size, 1), ("--kid-subset-size", self.kid_subset_size, 2),
                  ("--kid-subsets", self.kid_subsets, 1), ("--is-splits", self.is_splits, 1),
                  ("--bootstrap", self.bootstrap, 0))
        for flag, value, low in checks:
            if value < low:
                raise DifflensError(f"{flag} must be at least {low}, got {value}.", f"pass {flag} >= {low}")


@dataclass(frozen=True)
class EmbeddingConfig:
    """The CLIP/DINOv2 metrics' models (CLIP score, CMMD, FD-DINOv2)."""

    clip_model: str = DEFAULT_CLIP_MODEL
    cmmd_clip_model: str | None = None  # None: DEFAULT_CMMD_CLIP_MODEL
    dinov2_model: str | None = None  # None: DEFAULT_DINOV2_MODEL
    per_prompt: bool = False
    batch_size: int = 32  # images per CLIP/DINOv2 forward pass (the Python API; the CLI keeps it)
    # distribution metrics of the features group (fd-clip, fid-inf, vendi)
    fd_clip_model: str = DEFAULT_FD_CLIP_MODEL
    fid_inf_min_fake: int = DEFAULT_FID_INF_MIN_FAKE
    fid_inf_points: int = DEFAULT_FID_INF_POINTS
    vendi_q: float = DEFAULT_VENDI_Q
    # preference models (metrics hpsv2, pickscore): weights, and the autocast dtype of their forward pass
    hpsv2_checkpoint: str | None = None  # None: the version's file from the hub (online only)
    hpsv2_arch: str = DEFAULT_HPSV2_ARCH
    hpsv2_version: HpsVersion = DEFAULT_HPSV2_VERSION
    pickscore_model: str = DEFAULT_PICKSCORE_MODEL
    preference_dtype: Dtype = "float32"
    # imagereward: ImageReward.pt (None: the file of DEFAULT_IMAGEREWARD_REPO), tokenizer, architecture
    imagereward_checkpoint: str | None = None
    imagereward_tokenizer: str = DEFAULT_IMAGEREWARD_TOKENIZER
    imagereward_config: str | None = None  # None: the published one (med_config.json values, ViT-L/16)


@dataclass(frozen=True)
class StatsBuildConfig:
    """``difflens stats build`` settings of its own. ``batch_size`` None = by device: 16 images per
    Inception forward on CPU, where a batch's activations dominate the peak memory of a long streaming
    build (batch 50: 1.9 GB peak RSS, batch 16: 1.3 GB; BENCHMARKS.md, reference-statistics memory) at the
    same speed, and 128 on a GPU. The statistics agree across batch sizes to float32 noise."""

    batch_size: int | None = None


STATS_BATCH_CPU, STATS_BATCH_GPU = 16, 128


@dataclass(frozen=True)
class DatasetOptions:
    """How to read `hf:`/parquet/arrow specs (see difflens.refsets)."""

    image_column: str = "image"
    caption_column: str | None = None  # None: "caption" for datasets, prompt/text/caption for --fake folders
    num_real: int | None = None
    subset_seed: int = 0
    reference_size: int | None = None
    streaming: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """Generate-then-evaluate: samples of `model` for `prompts` (``None``: the pipeline's default)."""

    model: str
    num_samples: int
    samples_dir: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = RUNTIME.seed
    batch_size: int | None = None  # None: measured
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    dtype: Dtype = RUNTIME.dtype


def preference_options(*, hpsv2_checkpoint: str | None, hpsv2_arch: str, hpsv2_version: str,
                       pickscore_model: str, imagereward_checkpoint: str | None, imagereward_tokenizer: str,
                       imagereward_config: str | None, dtype: str) -> dict[str, dict[str, object]]:
    """The preference metrics' constructor settings (``metric_options`` of :mod:`difflens.metrics.route`)
    from their command-line options, as ``difflens metrics`` and ``difflens compare`` both pass them."""
    return {"hpsv2": {"checkpoint": hpsv2_checkpoint, "arch": hpsv2_arch, "version": hpsv2_version,
                      "dtype": dtype},
            "pickscore": {"model": pickscore_model, "dtype": dtype},
            "imagereward": {"checkpoint": imagereward_checkpoint, "tokenizer": imagereward_tokenizer,
                            "config": imagereward_config, "dtype": dtype}}
