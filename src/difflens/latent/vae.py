"""VAE round trip with the model's own latent normalization, and Flux's 2x2 latent packing.

The diffusion model works on *normalized* latents (DESIGN.md section 4; diffusers pipelines, end of
``__call__``)::

    encode:  z = (E(x) - shift) * scale             (SD1/2 scale 0.18215, SDXL 0.13025, no shift;
    decode:  x = D(z / scale + shift)                 SD3 1.5305/0.0609, Flux 0.3611/0.1159)

with ``scale = vae.config.scaling_factor`` and ``shift = vae.config.shift_factor`` (``None`` = no shift).
VAEs with per-channel ``latents_mean``/``latents_std`` (SDXL-style configs that set them) use
``z = (E(x) - mean) * scale / std`` and ``x = D(z * std / scale + mean)``, as the SDXL pipeline does.
Flux's transformer sees the latent packed 2x2 into tokens: ``(B, C, h, w) -> (B, h/2 * w/2, 4C)``; packing
and unpacking go through the pipeline's own ``_pack_latents``/``_unpack_latents``.

Images are float tensors in [0, 1], shape (N, 3, H, W); the VAE sees ``2x - 1``, and decoded images are
mapped back with ``(x * 0.5 + 0.5).clamp(0, 1)`` exactly as ``VaeImageProcessor.postprocess`` does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from difflens.errors import DifflensError

SUPPORTED_FAMILIES = ("sd", "sdxl", "sd3", "flux", "pixart")


def require_vae(pipe: Any) -> Any:
    """The pipeline's VAE, or a clear error for pipelines that have none."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise DifflensError(f"the model ({type(pipe).__name__}) has no VAE, so it has no latent space to "
                            "probe.",
                            "pass a latent diffusion pipeline with a `vae` component (SD 1.x/2.x/XL, SD3, "
                            "Flux, PixArt)")
    if not hasattr(vae, "encode") or not hasattr(vae, "decode"):
        raise DifflensError(f"the model's vae ({type(vae).__name__}) has no encode/decode.",
                            "pass a pipeline whose vae is an AutoencoderKL")
    return vae


def pipeline_family(pipe: Any) -> str:
    """sd, sdxl, sd3, flux or pixart; a clear error for other pipelines."""
    from difflens.models import model_family

    family = model_family(pipe)
    if family not in SUPPORTED_FAMILIES:
        raise DifflensError(f"the latent mode does not support {type(pipe).__name__}.",
                            f"use a pipeline of family {', '.join(SUPPORTED_FAMILIES)}")
    return family


def is_packed(pipe: Any) -> bool:
    """True for pipelines whose denoiser sees 2x2-packed latent tokens (Flux)."""
    return hasattr(pipe, "_pack_latents") and hasattr(pipe, "_unpack_latents")


def _cfg(vae: Any, key: str) -> Any:
    cfg = vae.config
    return cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)


def vae_factors(vae: Any) -> dict[str, Any]:
    """``scaling_factor``, ``shift_factor`` and per-channel ``latents_mean``/``latents_std`` from the
    config."""
    scale = _cfg(vae, "scaling_factor")
    if scale is None:
        raise DifflensError(f"{type(vae).__name__}.config has no scaling_factor.",
                            "pass a pipeline whose VAE config sets scaling_factor")
    return {"scaling_factor": float(scale), "shift_factor": _cfg(vae, "shift_factor"),
            "latents_mean": _cfg(vae, "latents_mean"), "latents_std": _cfg(vae, "latents_std")}


def _channel_stats(vae: Any, like: Any) -> tuple[Any, Any] | None:
    f = vae_factors(vae)
    if f["latents_mean"] is None or f["latents_std"] is None:
        return None
    import torch

    mean = torch.tensor(f["latents_mean"]).view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(f["latents_std"]).view(1, -1, 1, 1).to(like.device, like.dtype)
    return mean, std


def normalize_latents(vae: Any, raw: Any) -> Any:
    """VAE posterior sample/mode -> the model's latent: ``(raw - shift) * scale`` (or per-channel stats)."""
    f = vae_factors(vae)
    stats = _channel_stats(vae, raw)
    if stats is not None:
        return (raw - stats[0]) * f["scaling_factor"] / stats[1]
    if f["shift_factor"] is not None:
        raw = raw - f["shift_factor"]
    return raw * f["scaling_factor"]


def denormalize_latents(vae: Any, z: Any) -> Any:
    """The model's latent -> VAE decoder input, in the same operation order as the pipelines'
    ``__call__`` (``z / scale + shift``; SDXL: ``z * std / scale + mean``)."""
    f = vae_factors(vae)
    stats = _channel_stats(vae, z)
    if stats is not None:
        return z * stats[1] / f["scaling_factor"] + stats[0]
    z = z / f["scaling_factor"]
    if f["shift_factor"] is not None:
        z = z + f["shift_factor"]
    return z


def pack_latents(pipe: Any, latents: Any) -> Any:
    """(B, C, h, w) -> Flux tokens (B, h/2 * w/2, 4C) through the pipeline's ``_pack_latents``."""
    b, c, h, w = latents.shape
    return pipe._pack_latents(latents, b, c, h, w)


def unpack_latents(pipe: Any, packed: Any, size: int) -> Any:
    """Flux tokens -> (B, C, h, w) for an image of ``size`` x ``size`` pixels (``_unpack_latents``)."""
    return pipe._unpack_latents(packed, size, size, pipe.vae_scale_factor)


@contextlib.contextmanager
def _vae_precision(vae: Any) -> Iterator[Any]:
    """Run a float16 VAE whose config says ``force_upcast`` in float32 (it overflows in float16), as the
    SDXL pipeline does; restore its dtype afterwards. Yields (device, dtype) to feed it."""
    import torch

    param = next(vae.parameters())
    upcast = param.dtype == torch.float16 and bool(_cfg(vae, "force_upcast"))
    if upcast:
        vae.to(torch.float32)
    try:
        yield param.device, next(vae.parameters()).dtype
    finally:
        if upcast:
            vae.to(torch.float16)


def encode_images(pipe: Any, images: Any, batch_size: int = 8, with_features: bool = False) -> Any:
    """Encode [0,1] images (N, 3, H, W) to the model's normalized latents (N, C, H/f, W/f), float32 on CPU.

    Uses the posterior mode (mean), so encoding is deterministic. With ``with_features``, also returns the
    global average of the encoder's last feature map (``vae.encoder.mid_block`` output), float64 (N, D):
    the ``vae`` feature space (see :mod:`difflens.latent.features`), computed in the same pass.
    """
    import torch

    vae = require_vae(pipe)
    latents, feats = [], []
    captured: list[Any] = []
    hook = None
    if with_features:
        mid = getattr(getattr(vae, "encoder", None), "mid_block", None)
        if mid is None:
            raise DifflensError(f"{type(vae).__name__} has no encoder.mid_block for the `vae` feature space.",
                                "choose --features clip or --features inception")
        hook = mid.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad(), _vae_precision(vae) as (device, dtype):
            for start in range(0, images.shape[0], batch_size):
                x = images[start:start + batch_size].to(device=device, dtype=dtype) * 2.0 - 1.0
                captured.clear()
                raw = vae.encode(x).latent_dist.mode()
                latents.append(normalize_latents(vae, raw).float().cpu())
                if with_features:
                    feats.append(captured[-1].float().mean(dim=(2, 3)).double().cpu())
    finally:
        if hook is not None:
            hook.remove()
    z = torch.cat(latents)
    if with_features:
        return z, torch.cat(feats).numpy()
    return z


def decode_latents(pipe: Any, latents: Any, size: int | None = None, batch_size: int = 8) -> Any:
    """Decode normalized latents to [0,1] images (N, 3, H, W), float32 on CPU.

    ``latents`` is (N, C, h, w), or Flux-packed (N, tokens, 4C), which needs ``size`` (the pixel size) to
    unpack, as the pipeline's ``__call__`` does before decoding.
    """
    import torch

    vae = require_vae(pipe)
    if latents.dim() == 3:
        if not is_packed(pipe) or size is None:
            raise DifflensError("packed (N, tokens, channels) latents need a Flux pipeline and the image "
                                "size.",
                                "pass 4-D latents (N, C, h, w), or the size the latents were made at")
        latents = unpack_latents(pipe, latents, size)
    out = []
    with torch.no_grad(), _vae_precision(vae) as (device, dtype):
        for start in range(0, latents.shape[0], batch_size):
            z = latents[start:start + batch_size].to(device=device, dtype=dtype)
            image = vae.decode(denormalize_latents(vae, z), return_dict=False)[0]
            out.append((image.float() * 0.5 + 0.5).clamp(0, 1).cpu())
    return torch.cat(out)


def psnr(reference: Any, test: Any, data_range: float = 1.0) -> list[float]:
    """Peak signal-to-noise ratio per image, ``10 log10(range^2 / MSE)`` over all pixels and channels, in dB
    (``inf`` for identical images)."""
    diff = (reference.double() - test.double()) ** 2
    mse = diff.flatten(1).mean(dim=1).tolist()
    return [math.inf if m == 0 else 10.0 * math.log10(data_range ** 2 / m) for m in mse]
