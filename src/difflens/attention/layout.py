"""Find the attention layers where image queries meet text keys, from the model's own modules.

The layout is read from the denoiser's modules and their processor classes, never from the diffusers
version:

* ``cross``: a diffusers ``Attention`` with ``is_cross_attention`` (UNet ``attn2`` of SD 1.x/2.x/XL,
  PixArt ``attn2``). Queries are image tokens, keys are the text sequence (PixArt adds a key mask).
* ``joint_image_first``: an ``Attention`` with added key/value projections run by a Joint processor
  (SD3 MMDiT). Keys are ``[image, text]``.
* ``joint_text_first``: a ``FluxAttention`` with added projections (Flux double-stream block). Keys are
  ``[text, image]``.
* ``single_text_first``: a ``FluxAttention`` without added projections (Flux single-stream block): the
  block feeds ``[text, image]`` as one sequence; the text length comes from the denoiser call.

Self-attention layers (UNet ``attn1``, SD3.5 ``attn2``) are skipped.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError

#: Processor classes whose cross-attention math the replay reproduces (same q/k path, same softmax).
CROSS_PROCESSORS = frozenset({
    "AttnProcessor", "AttnProcessor2_0", "FusedAttnProcessor2_0", "XFormersAttnProcessor",
    "SlicedAttnProcessor", "AttnProcessorNPU",
})
#: MMDiT processors that concatenate ``[image, text]`` (SD3).
JOINT_IMAGE_FIRST_PROCESSORS = frozenset({
    "JointAttnProcessor2_0", "FusedJointAttnProcessor2_0", "XFormersJointAttnProcessor",
})
#: Processors that concatenate ``[text, image]`` (Flux double and single blocks).
TEXT_FIRST_PROCESSORS = frozenset({"FluxAttnProcessor", "FluxAttnProcessor2_0_NPU"})

KINDS = ("cross", "joint_image_first", "joint_text_first", "single_text_first")


@dataclass(frozen=True)
class AttnLayer:
    """One image-text attention layer of the denoiser."""

    name: str          # module path in the denoiser, e.g. "mid_block.attentions.0.transformer_blocks.0.attn2"
    kind: str          # one of KINDS
    processor: str     # processor class name at detection time
    heads: int
    supported: bool    # the replay knows this processor's math

    @property
    def joint(self) -> bool:
        """Keys include image tokens too (MMDiT): probabilities over text do not sum to 1."""
        return self.kind != "cross"


def denoiser_of(pipe: Any) -> tuple[str, Any]:
    """The pipeline's denoiser: ``("unet", module)`` or ``("transformer", module)``."""
    for attr in ("unet", "transformer"):
        mod = getattr(pipe, attr, None)
        if mod is not None:
            return attr, mod
    raise DifflensError(f"{type(pipe).__name__} has no unet or transformer component.",
                        "attention maps need a text-to-image pipeline with a UNet or transformer denoiser")


def _kind(module: Any) -> str | None:
    proc = type(getattr(module, "processor", None)).__name__
    cls = type(module).__name__
    if cls == "FluxAttention" or proc in TEXT_FIRST_PROCESSORS:
        if getattr(module, "added_kv_proj_dim", None) is not None:
            return "joint_text_first"
        if getattr(module, "pre_only", False):
            return "single_text_first"
        return None
    added = getattr(module, "added_kv_proj_dim", None) is not None
    if getattr(module, "add_k_proj", None) is not None and added:
        # Added key/value projections: joint (MMDiT) attention when run by a Joint processor.
        if proc in JOINT_IMAGE_FIRST_PROCESSORS or "Joint" in proc:
            return "joint_image_first"
        return None
    if getattr(module, "is_cross_attention", False):
        return "cross"
    return None


def _supported(kind: str, proc: str) -> bool:
    if kind == "cross":
        return proc in CROSS_PROCESSORS
    if kind == "joint_image_first":
        return proc in JOINT_IMAGE_FIRST_PROCESSORS
    return proc in TEXT_FIRST_PROCESSORS


def detect_layers(denoiser: Any) -> list[AttnLayer]:
    """Every image-text attention layer of ``denoiser``, in module order.

    Raises :class:`DifflensError` when the model has no cross or joint attention (an unconditional or
    class-conditional model).
    """
    layers: list[AttnLayer] = []
    for name, module in denoiser.named_modules():
        if not all(hasattr(module, a) for a in ("processor", "set_processor", "to_q")):
            continue
        kind = _kind(module)
        if kind is None:
            continue
        proc = type(module.processor).__name__
        layers.append(AttnLayer(name=name, kind=kind, processor=proc, heads=int(module.heads),
                                supported=_supported(kind, proc)))
    if not layers:
        raise DifflensError(
            f"{type(denoiser).__name__} has no cross- or joint-attention layer (image queries over text "
            "keys).",
            "attention maps need a text-conditioned model (SD 1.x/2.x, SDXL, SD3, Flux, PixArt)")
    return layers


def select_layers(layers: list[AttnLayer], pattern: str | None) -> list[AttnLayer]:
    """Layers whose name matches any comma-separated glob in ``pattern`` (``None``/``"*"``: all).

    A glob without wildcards matches as a substring (``up_blocks`` selects every layer under it).
    Raises when nothing matches, or when a selected layer runs a processor the replay does not know.
    """
    if pattern is None or pattern.strip() in ("", "*", "all"):
        chosen = list(layers)
    else:
        globs = [p.strip() for p in pattern.split(",") if p.strip()]
        chosen = []
        for layer in layers:
            for g in globs:
                has_wild = any(c in g for c in "*?[")
                if (fnmatch.fnmatchcase(layer.name, g) if has_wild else g in layer.name):
                    chosen.append(layer)
                    break
        if not chosen:
            names = [la.name for la in layers]
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            raise DifflensError(f"--layers {pattern!r} matches none of the {len(names)} cross/joint-"
                                f"attention layers ({shown}).",
                                "use a glob or a name fragment of those layers, e.g. 'up_blocks' or '*attn2'")
    bad = [la for la in chosen if not la.supported]
    if bad:
        la = bad[0]
        raise DifflensError(f"layer {la.name} runs attention processor {la.processor}, whose query/key path "
                            "difflens cannot replay.",
                            "restore the default processors (set_default_attn_processor() on the unet or "
                            "transformer), or exclude the layer with --layers")
    return chosen


def module_of(denoiser: Any, name: str) -> Any:
    """The submodule at dotted path ``name``."""
    return denoiser.get_submodule(name)


def grid_sizes(latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Every grid a layer can have for this latent: the latent divided by 1, 2, 4, ... (ceil division, as
    strided convolutions do)."""
    H, W = latent_hw
    out, f = [], 1
    while f <= max(H, W):
        out.append((-(-H // f), -(-W // f)))
        f *= 2
    return out


def grid_for(n_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) token grid of a layer with ``n_queries`` image tokens, for a latent of ``latent_hw``.

    Layers run at the latent resolution divided by a power of two (UNet down/up blocks: ceil division,
    as strided convolutions do; patchified transformers: patch size; Flux: 2x2 packing): one of
    :func:`grid_sizes`.
    """
    for h, w in grid_sizes(latent_hw):
        if h * w == n_queries:
            return h, w
    H, W = latent_hw
    raise DifflensError(f"cannot place {n_queries} image tokens on a grid for a {H}x{W} latent.",
                        "this model's token layout is not supported by the attention mode")
