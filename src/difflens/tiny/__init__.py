"""Tiny random-weight diffusers pipelines and tokenizers, built offline (no hub download).

Light to import: torch, diffusers and transformers are imported only inside the functions.
"""

from difflens.tiny.pipelines import (
    FAMILIES,
    LATENT_CHANNELS,
    MAX_SEQUENCE_LENGTH,
    PIPELINE_CLASSES,
    VAE_SCALE_FACTOR,
    build_tiny_pipeline,
    save_tiny_pipeline,
)
from difflens.tiny.tokenizers import WORDS, build_clip_tokenizer, build_t5_tokenizer

__all__ = [
    "FAMILIES",
    "LATENT_CHANNELS",
    "MAX_SEQUENCE_LENGTH",
    "PIPELINE_CLASSES",
    "VAE_SCALE_FACTOR",
    "WORDS",
    "build_clip_tokenizer",
    "build_t5_tokenizer",
    "build_tiny_pipeline",
    "save_tiny_pipeline",
]
