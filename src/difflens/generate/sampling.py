"""One generate batch through a diffusers pipeline: the run's settings resolved against the pipeline's
defaults, the call, the uint8 conversion and flags, prompt-truncation counts, and the regeneration of one
recorded sample.

Each sample is drawn with its own ``torch.Generator("cpu").manual_seed(sample_seed(seed, index))``, so a
sample's starting noise does not depend on the batch it was made in or on the number of runs it took.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.generate.manifest import ManifestEntry, RunSettings
from difflens.generate.options import GenerateOptions, TruncationReport
from difflens.generate.prompts import prompts_digest
from difflens.generate.seeds import SEED_SCHEME, generator_for
from difflens.pipeline_call import call_kwargs, call_parameters

#: Parameters that mark a pipeline as image-conditioned (img2img, inpainting, control), not text-to-image.
_IMAGE_INPUTS = ("image", "mask_image", "control_image", "init_image", "video")


def check_text_to_image(pipe: Any) -> None:
    """Refuse pipelines that do not make images from text alone."""
    params = call_parameters(pipe)
    name = type(pipe).__name__
    if "prompt" not in params:
        raise DifflensError(f"{name} takes no text prompt, so it is not a text-to-image pipeline.",
                            "pass a text-to-image model (Stable Diffusion, SDXL, SD3, Flux, PixArt)")
    extra = [p for p in _IMAGE_INPUTS if p in params]
    if extra:
        raise DifflensError(f"{name} takes an input image ({extra[0]}=...), so it is not a text-to-image "
                            "pipeline.", "pass the text-to-image variant of the model")


def _default(params: dict[str, inspect.Parameter], name: str, fallback: Any) -> Any:
    p = params.get(name)
    if p is None or p.default is inspect.Parameter.empty or p.default is None:
        return fallback
    return p.default


def _size_multiple(pipe: Any) -> int:
    from difflens.models import size_multiple

    return size_multiple(pipe)


def default_size(pipe: Any) -> int:
    """The pipeline's default height/width in pixels."""
    from difflens.models import required_default_size

    return required_default_size(pipe)


def resolve_settings(pipe: Any, model: str | Path, prompts: Sequence[str], options: GenerateOptions,
                     dtype: str) -> RunSettings:
    """The run's settings with the pipeline's defaults filled in (validated, nothing written)."""
    check_text_to_image(pipe)
    params = call_parameters(pipe)
    steps = options.steps if options.steps is not None else int(_default(params, "num_inference_steps", 50))
    guidance = options.guidance if options.guidance is not None else float(
        _default(params, "guidance_scale", 1.0))
    height = options.height or default_size(pipe)
    width = options.width or default_size(pipe)
    mult = _size_multiple(pipe)
    for name, value in (("--height", height), ("--width", width)):
        if value % mult:
            raise DifflensError(f"{name} {value} is not a multiple of {mult}, which "
                                f"{type(pipe).__name__} needs.",
                                f"pass {name} {max(mult, value // mult * mult)}")
    if options.negative_prompt is not None:
        if "negative_prompt" not in params:
            raise DifflensError(f"{type(pipe).__name__} takes no negative prompt.",
                                "leave --negative-prompt out")
        if "true_cfg_scale" in params:
            raise DifflensError(f"{type(pipe).__name__} uses a negative prompt only with true CFG "
                                "(true_cfg_scale > 1), which difflens generate does not run.",
                                "leave --negative-prompt out")
    sched = pipe.scheduler
    sched_config = json.dumps({k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
                              sort_keys=True, default=str)
    path = Path(str(model)).expanduser()
    model_str = str(path.resolve()) if path.exists() else str(model)
    return RunSettings(
        model=model_str, pipeline=type(pipe).__name__, scheduler=type(sched).__name__,
        scheduler_config=sched_config, steps=int(steps), guidance=float(guidance), height=int(height),
        width=int(width), negative_prompt=options.negative_prompt, seed=int(options.seed),
        seed_scheme=SEED_SCHEME, dtype=dtype, prompts_digest=prompts_digest(list(prompts)),
        num_prompts=len(prompts),
    )


def pipeline_kwargs(pipe: Any, settings: RunSettings, prompts: Sequence[str], seeds: Sequence[int]) -> dict:
    """Keyword arguments of one pipeline call; each sample gets its own CPU generator."""
    inputs: dict[str, Any] = {"prompt": list(prompts), "generator": [generator_for(s) for s in seeds]}
    if settings.negative_prompt is not None:
        inputs["negative_prompt"] = [settings.negative_prompt] * len(prompts)
    return call_kwargs(pipe, output_type="np", steps=settings.steps, guidance=settings.guidance,
                       height=settings.height, width=settings.width, **inputs)


def run_pipeline(pipe: Any, settings: RunSettings, prompts: Sequence[str],
                 seeds: Sequence[int]) -> tuple[Any, list[bool], list[bool]]:
    """Images as uint8 (B, H, W, 3), NaN flags, safety-checker flags.

    The uint8 conversion is diffusers' own (``(x * 255).round()``), so a PNG holds exactly what
    ``pipe(...).images[0]`` (PIL output) holds. NaN pixels are set to 0 after being flagged.
    """
    import numpy as np
    import torch

    with torch.inference_mode(), _quiet_libraries():
        out = pipe(**pipeline_kwargs(pipe, settings, prompts, seeds))
    images = np.asarray(out.images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    nan = [bool(np.isnan(im).any()) for im in images]
    images = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    u8 = (images * 255).round().clip(0, 255).astype(np.uint8)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    nsfw_raw = getattr(out, "nsfw_content_detected", None)
    nsfw = [bool(x) for x in nsfw_raw] if nsfw_raw is not None else [False] * len(u8)
    if u8.shape[1:3] != (settings.height, settings.width):
        raise DifflensError(f"the pipeline returned {u8.shape[2]}x{u8.shape[1]} images, not the "
                            f"{settings.width}x{settings.height} asked for.",
                            "pass --height/--width the pipeline supports")
    return u8, nan, nsfw


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence per-call truncation warnings of diffusers/transformers: difflens counts and reports them."""
    import diffusers
    import transformers

    old_d = diffusers.utils.logging.get_verbosity()
    old_t = transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(old_d)
        transformers.utils.logging.set_verbosity(old_t)


def count_truncated(pipe: Any, run_prompts: Sequence[str]) -> TruncationReport:
    """Count the prompts each of the pipeline's tokenizers truncates (CLIP: 77 tokens; T5: the pipeline's
    ``max_sequence_length`` default)."""
    params = call_parameters(pipe)
    max_seq = _default(params, "max_sequence_length", None)
    report = TruncationReport()
    unique = list(dict.fromkeys(run_prompts))
    truncated: set[str] = set()
    with _quiet_libraries():
        for attr in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tok = getattr(pipe, attr, None)
            if tok is None:
                continue
            is_clip = type(tok).__name__.startswith("CLIP")
            limit = tok.model_max_length if (is_clip or max_seq is None) else int(max_seq)
            if not limit or limit > 100_000:
                continue
            report.limits[attr] = int(limit)
            n = 0
            for p in unique:
                ids = tok(p, add_special_tokens=True, truncation=False)["input_ids"]
                if len(ids) > limit:
                    n += 1
                    truncated.add(p)
            report.by_tokenizer[attr] = n
    report.prompts = len(truncated)
    report.samples = sum(1 for p in run_prompts if p in truncated)
    report.examples = [p[:80] for p in unique if p in truncated][:3]
    return report


def regenerate(pipe: Any, entry: ManifestEntry, alone: bool = False) -> Any:
    """Regenerate one sample from its manifest entry: uint8 (H, W, 3).

    ``alone=True`` is exactly ``pipe(prompt, ..., generator=torch.Generator("cpu").manual_seed(entry.seed))``:
    bit-identical to the stored PNG when the sample was made at batch size 1. By default the call has the
    recorded batch size (the sample repeated, each copy with its own generator of the same seed), which
    reproduces batched samples bit-exactly too, since a row's result depends on the batch shape only.
    """
    settings = RunSettings(
        model=entry.model, pipeline=type(pipe).__name__, scheduler=entry.scheduler, scheduler_config="",
        steps=entry.steps, guidance=entry.guidance, height=entry.height, width=entry.width,
        negative_prompt=entry.negative_prompt, seed=0, seed_scheme=SEED_SCHEME, dtype=entry.dtype,
        prompts_digest="", num_prompts=0,
    )
    n = 1 if alone else max(1, entry.batch_size)
    images, _, _ = run_pipeline(pipe, settings, [entry.prompt] * n, [entry.seed] * n)
    return images[0]
