"""Attention on a given image: encode it with the model's VAE, noise it to chosen levels, run the denoiser
once per level with the prompt, and capture the maps exactly as the generation route does.

**Noise level** L in (0, 1] is a position on the model's *training* noise axis, the same for every sampler
(the sampler only decides which levels inference visits):

* VP schedulers (everything with ``alphas_cumprod``: DDPM, DDIM, PNDM, Euler, DPM-Solver... on SD 1.x/2.x,
  SDXL, PixArt): training timestep t = round(L (T - 1)), T = ``num_train_timesteps``;
  x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (``DDPMScheduler.add_noise``); the denoiser gets t.
* Flow matching (SD3, Flux): sigma = L; x_t = (1 - sigma) z0 + sigma eps
  (``FlowMatchEulerDiscreteScheduler.scale_noise``); the denoiser gets sigma T (SD3) or sigma (Flux, whose
  pipeline divides by 1000). A shift changes which sigmas sampling visits, not this map, so L is the
  share of noise in x_t.

Each level's log-SNR (VP ln(abar/(1 - abar)); flow 2 ln((1 - sigma)/sigma)) is recorded beside it.
``eps`` is one draw from ``torch.Generator("cpu").manual_seed(seed)``, the same for every level. z0 is the
VAE posterior mode, normalized with ``vae.config`` (:mod:`difflens.latent.vae`). One conditional denoiser
call per level, in the order given (no classifier-free guidance: the unconditional branch carries no word
maps); the capture counts each call as one step, so ``per_step`` holds one map per level and ``maps`` is
their mean. Besides the capture's own checks, the denoiser's prediction with capture must equal, bit for
bit, its prediction without (same kernels on the same inputs).

**Image rule**: read as RGB (alpha dropped, grayscale expanded), never resized: both sides must be
multiples of the model's size multiple (VAE factor x patch size, x 2 for Flux); another size is refused
with the nearest valid sizes named (crop or resize it yourself; difflens does not guess which).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from difflens.attention.config import ImageAttentionConfig
from difflens.errors import DifflensError
from difflens.hashing import sha256_file


def parse_noise_levels(values: Any) -> tuple[float, ...]:
    """Noise levels in (0, 1], in the order given; a clear error for anything else."""
    raw = values.replace(",", " ").split() if isinstance(values, str) else list(values)
    levels: list[float] = []
    for item in raw:
        try:
            v = float(item)
        except (TypeError, ValueError):
            raise DifflensError(f"--noise-level: {item!r} is not a number.",
                                "pass fractions of the training noise range, e.g. 0.3 0.6") from None
        if not (math.isfinite(v) and 0.0 < v <= 1.0):
            raise DifflensError(f"--noise-level {v:g} is outside (0, 1] (the fraction of the model's "
                                "training noise range: 1 = the noisiest training timestep).",
                                "pass levels in (0, 1], e.g. --noise-level 0.3 0.6")
        if v in levels:
            raise DifflensError(f"--noise-level {v:g} is given twice.", "pass each level once")
        levels.append(v)
    if not levels:
        raise DifflensError("no --noise-level given.", "pass one or more levels in (0, 1], e.g. 0.5")
    return tuple(levels)


def load_rgb(path: str | Path) -> Any:
    """uint8 (H, W, 3) from an image file (alpha dropped, grayscale expanded); clear errors otherwise."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise DifflensError(f"--image {p} does not exist.", "pass an image file (PNG, JPEG, ...)")
    try:
        with Image.open(p) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DifflensError(f"cannot read image {p}: {exc}", "pass a readable PNG or JPEG file") from None


def check_image_size(pipe: Any, hw: tuple[int, int]) -> None:
    """Refuse sides that are not multiples of the model's size multiple (see the module's image rule)."""
    from difflens.models import size_multiple

    mult = size_multiple(pipe)
    bad = [(n, v) for n, v in (("height", hw[0]), ("width", hw[1])) if v % mult or v < mult]
    if bad:
        name, v = bad[0]
        lo, hi = max(v - v % mult, mult), v - v % mult + mult
        raise DifflensError(f"the image is {hw[1]}x{hw[0]} (WxH); its {name} {v} is not a multiple of "
                            f"{mult}, which this model's VAE and denoiser need (difflens does not resize).",
                            f"crop or resize the image so both sides are multiples of {mult} "
                            f"(e.g. {name} {lo} or {hi})")


def noise_kind(scheduler: Any) -> str:
    """``"flow"`` (flow matching) or ``"vp"`` (``alphas_cumprod``); a clear error for other schedulers."""
    name = type(scheduler).__name__
    if "FlowMatch" in name or hasattr(scheduler, "scale_noise"):
        return "flow"
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return "vp"
    raise DifflensError(f"the scheduler {name} has neither alphas_cumprod nor flow-matching sigmas; difflens "
                        "cannot place a noise level on it.", "use the model's own scheduler")


def level_table(pipe: Any, family: str, levels: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per level: the training timestep, the denoiser's timestep input, signal and noise weights, log-SNR."""
    sched = pipe.scheduler
    kind = noise_kind(sched)
    T = int(sched.config.num_train_timesteps)
    rows = []
    for L in levels:
        if kind == "vp":
            t = round(L * (T - 1))
            abar = float(sched.alphas_cumprod[t])
            a, s = math.sqrt(abar), math.sqrt(max(1.0 - abar, 0.0))
            model_t: float = t
        else:
            t_f = L * T
            a, s = 1.0 - L, L
            model_t = L if family == "flux" else t_f
            t = t_f  # type: ignore[assignment]
        snr = (a * a) / (s * s) if s > 0 else math.inf
        rows.append({"level": L, "timestep": t, "model_timestep": model_t, "signal": a, "noise": s,
                     "log_snr": math.log(snr) if 0 < snr < math.inf else (math.inf if snr else -math.inf),
                     "schedule": kind})
    return rows


def _default_guidance(pipe: Any) -> float:
    p = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(p.default) if p is not None and isinstance(p.default, (int, float)) else 3.5


def conditioning(pipe: Any, family: str, prompt: str, max_seq: int | None, hw: tuple[int, int],
                 latent_hw: tuple[int, int]) -> dict[str, Any]:
    """The denoiser's text (and size) conditioning for one conditional pass, through the pipeline's own
    ``encode_prompt`` (so the text encoders see exactly what a generation feeds them)."""
    import torch

    device = pipe._execution_device
    if family == "sd":
        pe, _ = pipe.encode_prompt(prompt, device, 1, False)
        return {"encoder_hidden_states": pe}
    if family == "sdxl":
        pe, _, pooled, _ = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
        proj = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                else pipe.text_encoder_2.config.projection_dim)
        ids = pipe._get_add_time_ids(hw, (0, 0), hw, dtype=pe.dtype, text_encoder_projection_dim=proj)
        return {"encoder_hidden_states": pe,
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids.to(device)}}
    if family == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False, max_sequence_length=max_seq)
        return {"encoder_hidden_states": pe, "pooled_projections": pooled}
    if family == "flux":
        pe, pooled, text_ids = pipe.encode_prompt(prompt, None, device=device, num_images_per_prompt=1,
                                                  max_sequence_length=max_seq)
        img_ids = pipe._prepare_latent_image_ids(1, latent_hw[0] // 2, latent_hw[1] // 2, device, pe.dtype)
        kw = {"encoder_hidden_states": pe, "pooled_projections": pooled, "txt_ids": text_ids,
              "img_ids": img_ids}
        if getattr(pipe.transformer.config, "guidance_embeds", False):
            kw["guidance"] = torch.full([1], _default_guidance(pipe), device=device, dtype=torch.float32)
        return kw
    if family == "pixart":
        pe, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=device,
                                            clean_caption=False, max_sequence_length=max_seq)
        return {"encoder_hidden_states": pe, "encoder_attention_mask": mask,
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    raise DifflensError(f"attention on a given image does not support {type(pipe).__name__}.",
                        "use an SD 1.x/2.x, SDXL, SD3, Flux or PixArt pipeline")


def noise_latent(z0: Any, eps: Any, row: dict[str, Any]) -> Any:
    """x_t = signal z0 + noise eps for one row of :func:`level_table` (the model's forward process)."""
    return row["signal"] * z0 + row["noise"] * eps


def predict(pipe: Any, family: str, denoiser: Any, z: Any, row: dict[str, Any], cond: dict[str, Any]) -> Any:
    """One denoiser call on the (unpacked) latent ``z`` at the level ``row``; returns its prediction."""
    import torch

    from difflens.latent.vae import pack_latents

    flow = row["schedule"] == "flow"
    t = torch.tensor([row["model_timestep"]], device=z.device, dtype=denoiser.dtype if flow else torch.long)
    x = z.to(denoiser.dtype)
    with torch.no_grad():
        if family in ("sd", "sdxl"):
            return denoiser(x, t, **cond, return_dict=False)[0]
        if family == "flux":
            x = pack_latents(pipe, x)
        return denoiser(hidden_states=x, timestep=t, **cond, return_dict=False)[0]


def _sha256(path: str | Path) -> str | None:
    p = Path(path)
    return sha256_file(p) if p.is_file() else None


def run_attention_on_image(cfg: ImageAttentionConfig, image: Any | None = None,
                           pipe: Any | None = None) -> Any:
    """Attention maps of ``cfg.prompt`` on a given image (module docs). ``image``: uint8 (H, W, 3) to use
    instead of reading ``cfg.image`` (which is then only recorded). Returns an
    :class:`~difflens.attention.api.AttentionResult` for :func:`~difflens.attention.api.write_outputs`."""
    import numpy as np
    import torch

    from difflens.attention.aggregate import OnlineAggregator
    from difflens.attention.api import AttentionConfig, AttentionResult, _record, plan_attention
    from difflens.attention.capture import AttentionCapture
    from difflens.attention.checks import capture_checks, check
    from difflens.attention.measures import spatial_entropy
    from difflens.attention.words import aggregate_words, call_default
    from difflens.latent.vae import encode_images, require_vae
    from difflens.models import load_pipeline, resolve_device

    levels = parse_noise_levels(cfg.noise_levels)
    img = load_rgb(cfg.image) if image is None else np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DifflensError(f"the image array has shape {img.shape} and dtype {img.dtype}.",
                            "pass uint8 RGB (H, W, 3)")
    hw = (int(img.shape[0]), int(img.shape[1]))
    if pipe is None:
        pipe = load_pipeline(cfg.model, cfg.dtype, resolve_device(cfg.device), cfg.offline)
    require_vae(pipe)
    check_image_size(pipe, hw)
    table = level_table(pipe, _family(pipe), levels)
    att_cfg = AttentionConfig(
        model=cfg.model, prompt=cfg.prompt, steps=len(levels), seed=cfg.seed, height=hw[0], width=hw[1],
        layers=cfg.layers, words=cfg.words, device=cfg.device, dtype=cfg.dtype, word_agg=cfg.word_agg,
        all_tokens=cfg.all_tokens, breakdown=cfg.breakdown, max_memory_mb=cfg.max_memory_mb,
        image_check=False, max_sequence_length=cfg.max_sequence_length, offline=cfg.offline)
    plan = plan_attention(att_cfg, pipe)                  # every check on words, layers, memory: before work
    family, den = plan.family, plan.denoiser
    dtype_name = str(den.dtype).replace("torch.", "")
    max_seq = (cfg.max_sequence_length or call_default(pipe, "max_sequence_length", 256)
               if family in ("sd3", "flux", "pixart") else None)

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    z0 = encode_images(pipe, x).to(den.device)
    eps = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(cfg.seed)).to(den.device)
    noisy = [noise_latent(z0, eps, row) for row in table]
    seconds["encode"] = time.perf_counter() - t0

    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, 1, [la.name for la in plan.layers], plan.joint,
                           plan.groups, cfg.word_agg, cfg.breakdown, den.device)
    encoders = tuple(e for seg in plan.prompt_tokens.segments for e, _ in seg.encoders)
    capture = AttentionCapture(pipe, den, plan.layers, [t.key for t in plan.tokens],
                               plan.prompt_tokens.text_len, plan.latent_hw, agg, images=1, check=True,
                               head_entropy=cfg.breakdown, encoders=encoders,
                               chunk_bytes=plan.estimate["chunk_bytes"])
    t0 = time.perf_counter()
    with capture, torch.no_grad():
        cond = conditioning(pipe, family, cfg.prompt, max_seq, hw, plan.latent_hw)
        preds = [predict(pipe, family, den, z, row, cond) for z, row in zip(noisy, table, strict=True)]
    seconds["denoise_with_capture"] = time.perf_counter() - t0
    result = agg.result()

    word_maps = aggregate_words(result.maps, plan.groups, cfg.word_agg).numpy()
    per_step_word = aggregate_words(result.per_step, plan.groups, cfg.word_agg).numpy()
    word_entropy_total = spatial_entropy(word_maps).numpy() if len(plan.words) else np.zeros(0)

    checks = capture_checks(plan, capture, result, dtype_name)
    checks.append(check("one_call_per_level", capture.stats.denoiser_calls == len(levels),
                        f"{capture.stats.denoiser_calls} denoiser call(s) for {len(levels)} noise level(s)"))
    if cfg.prediction_check:
        t0 = time.perf_counter()
        plain = [predict(pipe, family, den, z, row, cond) for z, row in zip(noisy, table, strict=True)]
        seconds["denoise_plain"] = time.perf_counter() - t0
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(plain, preds, strict=True))
        same = all(torch.equal(a, b) for a, b in zip(plain, preds, strict=True))
        checks.append(check("prediction_unchanged_by_capture", same,
                            "the denoiser's prediction with capture equals its prediction without, at every "
                            f"level (max abs difference {diff:g})", value=diff))

    rec = _record(att_cfg, plan, capture, result, word_entropy_total, checks, seconds, dtype_name, den.device)
    rec.update({
        "source": {"kind": "image", "path": str(cfg.image), "size": [hw[0], hw[1]],
                   "sha256": _sha256(cfg.image) if image is None else None},
        "noise_levels": table,
        "per_step_axis": "noise_level",
        "generator": 'eps = torch.randn(latent shape, generator=torch.Generator("cpu")'
                     f'.manual_seed({cfg.seed})), the same eps at every level',
        "call_arguments": {"denoiser_calls": len(levels),
                           "guidance": "none (one conditional pass per level)"},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    })
    rec["normalization"]["aggregation"] = rec["normalization"]["aggregation"].replace(
        "over steps (`maps`) or per step (`per_step`, every `stride`-th step)",
        "over the noise levels (`maps`) or per level (`per_step`, one step per level, in the order given)")
    return AttentionResult(config=att_cfg, image=img.astype(np.float32) / 255.0, aggregate=result,
                           word_maps=word_maps, per_step_word_maps=per_step_word, record=rec, checks=checks)


def _family(pipe: Any) -> str:
    from difflens.models import model_family

    return model_family(pipe)
