"""What the prompted extractors (the preference models hpsv2, pickscore, imagereward) share: the dtype
check made before any weights are read, one prompt per image in every batch, and the autocast their
forward pass runs under (float16/bfloat16 on a GPU; float32 runs without it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.errors import DifflensError


def check_dtype(model: str, dtype: str) -> None:
    """An unknown ``--preference-dtype`` is one error naming the model, before the network is built."""
    from difflens.config import DTYPES

    if dtype not in DTYPES:
        raise DifflensError(f"unknown dtype {dtype!r} for {model}.", f"use one of {', '.join(DTYPES)}")


def batch_prompts(model: str, n_images: int, prompts: Sequence[str] | None) -> list[str]:
    """The batch's prompts as strings, exactly one per image, else one clear error."""
    if prompts is None:
        raise DifflensError(f"{model} scores each image against its prompt, but no prompts were given.",
                            "pass one prompt per image (--prompts FILE, or a manifest.jsonl beside the "
                            "images)")
    if len(prompts) != n_images:
        raise DifflensError(f"{model}: {n_images} images but {len(prompts)} prompts.",
                            "give exactly one prompt per image")
    return [str(p) for p in prompts]


def autocast(device: str, dtype: str) -> Any:
    """``torch.autocast`` on ``device``'s type in ``dtype``, off for float32 (the weights stay float32)."""
    import torch

    return torch.autocast(str(device).split(":")[0], dtype=getattr(torch, dtype), enabled=dtype != "float32")
