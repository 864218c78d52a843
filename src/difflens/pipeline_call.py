"""Keyword arguments of a diffusers pipeline call: the one builder every mode uses (generate, attention,
latent generation and reconstruction).

A setting is passed only when the pipeline's ``__call__`` takes it, so one call site serves Stable Diffusion
1.x/2.x/XL, SD3, Flux and PixArt: ``guidance_scale``, ``max_sequence_length`` (T5 families),
``use_resolution_binning=False`` (PixArt: keep the asked size instead of snapping to an aspect-ratio bin) and
``clean_caption=False`` (PixArt: keep the prompt text as given). ``None`` means "the pipeline's default".
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

__all__ = ["call_kwargs", "call_parameters"]

OutputType = Literal["np", "pt", "pil", "latent"]


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    """The parameters of ``pipe.__call__`` by name."""
    return dict(inspect.signature(pipe.__call__).parameters)


def call_kwargs(pipe: Any, *, output_type: OutputType, steps: int | None = None,
                guidance: float | None = None, height: int | None = None, width: int | None = None,
                max_sequence_length: int | None = None, keep_size: bool = False, raw_prompt: bool = False,
                **inputs: Any) -> dict[str, Any]:
    """``inputs`` (prompt, generator, latents, image, ...) plus the run settings, as ``pipe(**kwargs)`` takes
    them. ``keep_size``: no resolution binning; ``raw_prompt``: no caption cleaning (both PixArt only)."""
    params = call_parameters(pipe)
    kw: dict[str, Any] = dict(inputs)
    if steps is not None:
        kw["num_inference_steps"] = int(steps)
    if height is not None:
        kw["height"] = int(height)
    if width is not None:
        kw["width"] = int(width)
    kw["output_type"] = output_type
    if guidance is not None and "guidance_scale" in params:
        kw["guidance_scale"] = float(guidance)
    if max_sequence_length is not None and "max_sequence_length" in params:
        kw["max_sequence_length"] = int(max_sequence_length)
    if keep_size and "use_resolution_binning" in params:
        kw["use_resolution_binning"] = False
    if raw_prompt and "clean_caption" in params:
        kw["clean_caption"] = False
    return kw
