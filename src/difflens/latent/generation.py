"""Generating through a pipeline from explicit initial noise and explicit text embeddings.

Everything the latent mode generates goes through the pipeline's own ``__call__`` with ``latents=`` (the
initial noise) and ``prompt_embeds=`` (plus ``pooled_prompt_embeds``/``prompt_attention_mask`` where the
family needs them); the pipeline itself computes the negative (empty-prompt) embeddings for guidance, as it
does for a plain ``pipe(prompt)``. Initial noise is drawn exactly as ``randn_tensor`` draws it for
``pipe(prompt, generator=torch.Generator().manual_seed(seed))`` (CPU generator, the pipeline's dtype, the
unpacked shape, then Flux packing), and the same generator, advanced past that draw, is handed to the
pipeline for any stochastic scheduler steps. So ``generate(pipe, encode_text(pipe, p), seed=s)`` reproduces
``pipe(p, generator=torch.Generator().manual_seed(s))``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from difflens.errors import DifflensError
from difflens.latent.vae import is_packed, pack_latents, pipeline_family, require_vae
from difflens.pipeline_call import call_kwargs

#: Families whose text encoder is T5 and whose call takes ``max_sequence_length``.
_SEQ_LEN_FAMILIES = ("sd3", "flux", "pixart")


@dataclass(frozen=True)
class GenerationSettings:
    """How frames are generated: square ``size`` in pixels, ``steps``, ``guidance`` (None = the pipeline's
    default) and ``max_sequence_length`` for T5 families (None = the pipeline's default)."""

    size: int
    steps: int = 25
    guidance: float | None = None
    max_sequence_length: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "steps": self.steps, "guidance": self.guidance,
                "max_sequence_length": self.max_sequence_length}


@dataclass
class TextCond:
    """Text conditioning passed to ``__call__``: float ``tensors`` that can be interpolated or shifted
    (``prompt_embeds``, ``pooled_prompt_embeds``) and ``extras`` kept as they are (PixArt's attention
    mask)."""

    tensors: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        return {**self.tensors, **self.extras}


def default_size(pipe: Any) -> int:
    """The pipeline's default image size in pixels (the size ``__call__`` uses without height/width)."""
    from difflens.models import required_default_size

    return required_default_size(pipe)


def size_multiple(pipe: Any) -> int:
    """Image sizes must be multiples of twice the VAE downsampling factor (Flux packing, patch size 2)."""
    return 2 * int(getattr(pipe, "vae_scale_factor", 8))


def resolve_size(pipe: Any, size: int | None) -> int:
    """``size`` or the pipeline's default, checked against :func:`size_multiple`."""
    s = default_size(pipe) if size is None else int(size)
    m = size_multiple(pipe)
    if s <= 0 or s % m:
        raise DifflensError(f"image size {s} is not a positive multiple of {m} for this model.",
                            f"pass --height/--width as a multiple of {m}")
    return s


def latent_shape(pipe: Any, size: int) -> tuple[int, ...]:
    """Shape of one image's initial noise before any packing: (1, C, h, w)."""
    family = pipeline_family(pipe)
    vsf = int(pipe.vae_scale_factor)
    if family in ("sd", "sdxl"):
        return (1, int(pipe.unet.config.in_channels), size // vsf, size // vsf)
    channels = int(pipe.transformer.config.in_channels)
    if family == "flux":
        h = 2 * (size // (vsf * 2))
        return (1, channels // 4, h, h)
    return (1, channels, size // vsf, size // vsf)


def initial_noise(pipe: Any, seed: int, size: int) -> tuple[Any, Any]:
    """The initial noise ``pipe(generator=manual_seed(seed))`` would draw, unpacked (1, C, h, w) in the
    pipeline's dtype on CPU, and the CPU generator advanced past that draw."""
    import torch

    g = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(latent_shape(pipe, size), generator=g, dtype=pipe.dtype)
    return noise, g


def sequence_length(pipe: Any, settings: GenerationSettings) -> int | None:
    """The T5 ``max_sequence_length`` to pass (settings, else the ``__call__`` default); None for CLIP-only
    families."""
    if pipeline_family(pipe) not in _SEQ_LEN_FAMILIES:
        return None
    if settings.max_sequence_length is not None:
        return int(settings.max_sequence_length)
    return int(inspect.signature(pipe.__call__).parameters["max_sequence_length"].default)


def encode_text(pipe: Any, prompt: str, settings: GenerationSettings) -> TextCond:
    """The positive text conditioning of ``prompt`` through the pipeline's own ``encode_prompt``, with the
    same arguments its ``__call__`` uses (so generating from it equals generating from the prompt)."""
    import torch

    family = pipeline_family(pipe)
    device = pipe._execution_device
    msl = sequence_length(pipe, settings)
    with torch.no_grad():
        if family == "sd":
            pe, _ = pipe.encode_prompt(prompt, device, 1, False)
            return TextCond({"prompt_embeds": pe})
        if family == "sdxl":
            pe, _, pooled, _ = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
            return TextCond({"prompt_embeds": pe, "pooled_prompt_embeds": pooled})
        if family == "sd3":
            pe, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False, max_sequence_length=msl)
            return TextCond({"prompt_embeds": pe, "pooled_prompt_embeds": pooled})
        if family == "flux":
            pe, pooled, _ = pipe.encode_prompt(prompt, None, device=device, num_images_per_prompt=1,
                                               max_sequence_length=msl)
            return TextCond({"prompt_embeds": pe, "pooled_prompt_embeds": pooled})
        pe, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=device,
                                            num_images_per_prompt=1, clean_caption=False,
                                            max_sequence_length=msl)
        return TextCond({"prompt_embeds": pe}, {"prompt_attention_mask": mask})


def generate(pipe: Any, cond: TextCond, noise: Any, generator: Any, settings: GenerationSettings) -> Any:
    """One image, [0,1] float (3, H, W) on CPU, from unpacked initial ``noise`` (1, C, h, w) and ``cond``.

    ``generator`` drives stochastic scheduler steps only (the noise is given).
    """
    import torch

    require_vae(pipe)
    family = pipeline_family(pipe)
    latents = noise.to(device=pipe._execution_device, dtype=pipe.dtype)
    if is_packed(pipe):
        latents = pack_latents(pipe, latents)
    kwargs = call_kwargs(pipe, output_type="pt", steps=settings.steps, guidance=settings.guidance,
                         height=settings.size, width=settings.size,
                         max_sequence_length=sequence_length(pipe, settings),
                         keep_size=family == "pixart",  # generate at exactly settings.size
                         latents=latents, generator=generator, **cond.kwargs())
    with torch.no_grad():
        out = pipe(**kwargs).images
    return out[0].float().cpu()


def generate_from_prompt(pipe: Any, prompt: str, seed: int, settings: GenerationSettings) -> Any:
    """``pipe(prompt, generator=manual_seed(seed))`` with the settings, as a [0,1] (3, H, W) tensor: the
    reference the latent mode's own generation path must reproduce."""
    import torch

    pixart = pipeline_family(pipe) == "pixart"
    kwargs = call_kwargs(pipe, output_type="pt", steps=settings.steps, guidance=settings.guidance,
                         height=settings.size, width=settings.size,
                         max_sequence_length=sequence_length(pipe, settings), keep_size=pixart,
                         raw_prompt=pixart, prompt=prompt,
                         generator=torch.Generator("cpu").manual_seed(int(seed)))
    with torch.no_grad():
        return pipe(**kwargs).images[0].float().cpu()
