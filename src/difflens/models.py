"""Loading diffusers pipelines from a hub id or a local directory, offline-capable.

Every mode that needs a model goes through :func:`load_pipeline`, so dtype, device and offline handling
are the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

DTYPES = ("float32", "float16", "bfloat16")


def is_offline(offline: bool = False) -> bool:
    """Offline when asked, or when HF_HUB_OFFLINE / DIFFLENS_OFFLINE is set."""
    keys = ("HF_HUB_OFFLINE", "DIFFLENS_OFFLINE")
    env = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in keys)
    return offline or env


def resolve_device(device: str | None = None) -> str:
    """``None``/``"auto"`` -> cuda when available, else cpu."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DifflensError(f"--device {device} was asked for, but no CUDA device is available.",
                            "use --device cpu")
    return device


def resolve_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise DifflensError(f"unknown dtype {dtype!r}.", f"use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load_pipeline(model: str | Path, dtype: str = "float32", device: str | None = None,
                  offline: bool = False) -> Any:
    """``DiffusionPipeline.from_pretrained(model)`` with a clear error when it cannot be loaded.

    ``model`` is a local pipeline directory (with model_index.json) or a hub id; offline, a hub id is
    looked up only in the local cache.
    """
    from diffusers import DiffusionPipeline

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = Path(str(model)).expanduser()
    local = path.exists()
    if local and not (path / "model_index.json").is_file():
        raise DifflensError(f"{path} is not a diffusers pipeline folder (no model_index.json).",
                            "pass the folder written by save_pretrained, or a hub id")
    off = is_offline(offline)
    import inspect

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    # diffusers >= 0.36 takes `dtype` (and warns on `torch_dtype`); older releases only know `torch_dtype`.
    source = inspect.getsource(DiffusionPipeline.from_pretrained)
    dtype_kw = "dtype" if 'kwargs.pop("dtype"' in source else "torch_dtype"
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(path) if local else str(model), local_files_only=off or local, **{dtype_kw: torch_dtype},
        )
    except (OSError, ValueError) as exc:
        where = "the local cache (offline mode)" if off else "the Hugging Face hub or the local cache"
        raise DifflensError(f"could not load model {model!r} from {where}: {str(exc).splitlines()[0]}",
                            "pass a local pipeline folder, or download the model first while online "
                            "(huggingface-cli download ID)") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def model_family(pipe: Any) -> str:
    """A short family name from the pipeline's components: sd, sdxl, sd3, flux, pixart, or the class name."""
    name = type(pipe).__name__
    for key, family in (("StableDiffusionXL", "sdxl"), ("StableDiffusion3", "sd3"), ("Flux", "flux"),
                        ("PixArt", "pixart"), ("StableDiffusion", "sd")):
        if name.startswith(key):
            return family
    return name


def size_multiple(pipe: Any) -> int:
    """Height and width must be multiples of this: VAE downsampling x transformer patch size, or x 2 for
    Flux's 2x2 latent packing."""
    vsf = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    if model_family(pipe) == "flux":
        return vsf * 2
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", None) if transformer else None
    return vsf * int(patch or 1)


def default_size(pipe: Any) -> int | None:
    """The height/width in pixels `__call__` uses when none is given, or None when it cannot be told."""
    vsf = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    sample = getattr(pipe, "default_sample_size", None)
    if not sample:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return int(sample) * vsf if sample else None


def required_default_size(pipe: Any) -> int:
    """:func:`default_size`, or a clear error when the pipeline does not tell it."""
    size = default_size(pipe)
    if size is None:
        raise DifflensError(f"cannot tell the default image size of {type(pipe).__name__}.",
                            "pass --height and --width")
    return size
