"""Attention mode, function API: ``run_attention(config) -> AttentionResult`` and ``write_outputs``.

Everything that can be wrong with the input (model without cross/joint attention, a word not in the
prompt, a layer pattern matching nothing, a prompt longer than an encoder holds, a capture larger than
the memory budget, a size the model cannot take) is checked by :func:`plan_attention` before anything is
generated or written.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from difflens.attention.aggregate import AggregateResult, OnlineAggregator, estimate_bytes, mib
from difflens.attention.checks import capture_checks, check
from difflens.attention.config import AttentionConfig
from difflens.attention.layout import AttnLayer, denoiser_of, detect_layers, select_layers
from difflens.attention.replay import DEFAULT_CHUNK_BYTES
from difflens.attention.words import (
    WORD_AGGREGATIONS,
    PromptTokens,
    Token,
    Word,
    select_tokens,
    select_words,
    text_segments,
    tokenize_prompt,
    word_groups,
)
from difflens.errors import DifflensError

NORMALIZATION = {
    "cross": "softmax over all keys (the text sequence): for each image query the probabilities over text "
             "tokens sum to 1; maps are the probability each image position gives the token",
    "joint": "softmax over all keys of the joint sequence (image and text tokens): `maps` hold the raw "
             "probability on each text token, so a query's text probabilities sum to its text mass (< 1); "
             "`text_mass` is that share per position and `maps_text_renormalized` divides by it (per head, "
             "then averaged)",
    "aggregation": "mean over heads, then over the conditional rows (CFG), then over the selected layers "
                   "(each resized bilinearly to the latent grid), then over steps (`maps`) or per step "
                   "(`per_step`, every `stride`-th step)",
}


@dataclass
class Plan:
    """A validated run: everything needed to generate, nothing generated yet."""

    pipe: Any
    family: str
    denoiser_attr: str
    denoiser: Any
    all_layers: list[AttnLayer]
    layers: list[AttnLayer]
    prompt_tokens: PromptTokens
    words: list[Word]
    tokens: list[Token]
    groups: list[list[int]]
    height: int
    width: int
    latent_hw: tuple[int, int]
    call_kwargs: dict[str, Any]
    estimate: dict[str, int]
    joint: bool


@dataclass
class AttentionResult:
    """What a run produced; :func:`write_outputs` writes it."""

    config: AttentionConfig
    image: Any                      # (H, W, 3) float32 in [0, 1]
    aggregate: AggregateResult
    word_maps: Any                  # (Wd, h, w) over all steps
    per_step_word_maps: Any         # (K, Wd, h, w)
    record: dict[str, Any]          # attention.json content
    checks: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
def _validate_config(cfg: AttentionConfig) -> None:
    if cfg.steps < 1:
        raise DifflensError(f"--steps must be at least 1 (got {cfg.steps}).", "pass --steps 20, for example")
    if cfg.stride < 1:
        raise DifflensError(f"--stride must be at least 1 (got {cfg.stride}).",
                            "pass --stride 1 to keep every step")
    if cfg.word_agg not in WORD_AGGREGATIONS:
        raise DifflensError(f"unknown word aggregation {cfg.word_agg!r}.",
                            f"use {' or '.join(WORD_AGGREGATIONS)}")
    if cfg.max_memory_mb <= 0:
        raise DifflensError("--max-memory-mb must be positive.", "pass the capture budget in MiB, e.g. 2048")
    if not cfg.prompt.strip():
        raise DifflensError("the prompt is empty.", "pass --prompt with at least one word")
    for name, v in (("--height", cfg.height), ("--width", cfg.width)):
        if v is not None and v <= 0:
            raise DifflensError(f"{name} must be positive (got {v}).", "pass a size in pixels")


def _call_kwargs(pipe: Any, family: str, cfg: AttentionConfig, height: int, width: int,
                 max_seq: int | None) -> dict[str, Any]:
    from difflens.pipeline_call import call_kwargs, call_parameters

    one = "num_images_per_prompt" in call_parameters(pipe)
    extra: dict[str, Any] = {"num_images_per_prompt": 1} if one else {}
    # PixArt: keep the asked size (no aspect-ratio binning) and the prompt text we tokenize ourselves.
    pixart = family == "pixart"
    return call_kwargs(pipe, output_type="np", steps=cfg.steps, guidance=cfg.guidance, height=height,
                       width=width, max_sequence_length=max_seq, keep_size=pixart, raw_prompt=pixart,
                       prompt=cfg.prompt, **extra)


def plan_attention(cfg: AttentionConfig, pipe: Any) -> Plan:
    """Validate every input against the loaded pipeline; raise DifflensError before any generation."""
    from difflens.models import model_family

    _validate_config(cfg)
    family = model_family(pipe)
    attr, denoiser = denoiser_of(pipe)
    all_layers = detect_layers(denoiser)
    layers = select_layers(all_layers, cfg.layers)
    joint = any(la.joint for la in layers)
    uses_t5 = family in ("sd3", "flux", "pixart")
    max_seq = None
    if uses_t5:
        from difflens.attention.words import call_default

        max_seq = cfg.max_sequence_length or call_default(pipe, "max_sequence_length", 256)
    elif cfg.max_sequence_length is not None:
        raise DifflensError(f"--max-sequence-length applies to T5 models; {family} pipelines use CLIP (77).",
                            "drop --max-sequence-length")
    segments = text_segments(pipe, family, max_seq)
    pt = tokenize_prompt(pipe, family, cfg.prompt, segments)
    wanted = list(cfg.words) if cfg.words else None
    words = select_words(pt, wanted)
    tokens = select_tokens(pt, words, wanted, cfg.all_tokens)
    if not tokens:
        raise DifflensError("the prompt has no token to map.", "pass a prompt with words")
    groups = word_groups(words, tokens)

    from difflens.models import default_size, size_multiple

    mult = size_multiple(pipe)
    default = default_size(pipe) or 64 * int(getattr(pipe, "vae_scale_factor", 8))
    height = cfg.height or default
    width = cfg.width or default
    for name, v in (("--height", height), ("--width", width)):
        if v % mult:
            raise DifflensError(f"{name} {v} is not a multiple of {mult}, which this model needs.",
                                f"use {v - v % mult or mult} or {v - v % mult + mult}")
    vsf = int(getattr(pipe, "vae_scale_factor", 8))
    latent_hw = (height // vsf, width // vsf)

    patch = 2 if family == "flux" else int(getattr(denoiser.config, "patch_size", None) or 1)
    n_img = -(-latent_hw[0] // patch) * -(-latent_hw[1] // patch)   # largest layer's image tokens
    budget = int(cfg.max_memory_mb * 2**20)

    def estimate(chunk: int) -> dict[str, int]:
        return estimate_bytes(len(tokens), latent_hw, cfg.steps + 1, cfg.stride, joint,
                              n_layers_breakdown=len(layers) if cfg.breakdown else 0, max_queries=n_img,
                              max_keys=pt.text_len + (n_img if joint else 0),
                              max_heads=max(la.heads for la in layers), chunk_bytes=chunk)

    est = estimate(DEFAULT_CHUNK_BYTES)
    if est["total"] > budget:
        # Fewer heads at once shrink the transient probabilities; one head at a time is the floor.
        est = estimate(max(est["per_head"], (budget - est["fixed"]) // 2))
    if est["total"] > budget:
        parts = (f"per-step maps {mib(est['per_step'])} ({est['kept_steps']} kept steps x {len(tokens)} "
                 f"tokens x {latent_hw[0]}x{latent_hw[1]})")
        if est["per_layer"]:
            parts += f", per-layer maps {mib(est['per_layer'])}"
        parts += f", accumulators {mib(est['accumulators'])}, transient {mib(est['transient'])}"
        options = {"per_step": "raise --stride (fewer per-step maps)",
                   "per_layer": "drop --breakdown",
                   "accumulators": "choose fewer tokens with --words",
                   "transient": "lower --height/--width (the largest layer's probabilities)"}
        order = sorted(options, key=lambda k: -est[k])
        fixes = list(dict.fromkeys(options[k] for k in order if est[k] > 0))
        raise DifflensError(
            f"the attention capture needs about {mib(est['total'])} ({parts}), over the budget of "
            f"{mib(budget)}.", "; ".join([*fixes, "or raise --max-memory-mb"]))
    return Plan(pipe=pipe, family=family, denoiser_attr=attr, denoiser=denoiser, all_layers=all_layers,
                layers=layers, prompt_tokens=pt, words=words, tokens=tokens, groups=groups, height=height,
                width=width, latent_hw=latent_hw,
                call_kwargs=_call_kwargs(pipe, family, cfg, height, width, max_seq), estimate=est,
                joint=joint)


# ---------------------------------------------------------------------------------------------------
def _generate(plan: Plan, seed: int, callback: Any | None = None) -> Any:
    import torch

    kw = dict(plan.call_kwargs)
    kw["generator"] = torch.Generator("cpu").manual_seed(seed)
    params = inspect.signature(plan.pipe.__call__).parameters
    if callback is not None and "callback_on_step_end" in params:
        kw["callback_on_step_end"] = callback
    with torch.no_grad():
        out = plan.pipe(**kw)
    return out.images[0]


def run_attention(cfg: AttentionConfig, pipe: Any | None = None) -> AttentionResult:
    """Generate one image for ``cfg.prompt`` and capture its image->text attention (see module docs)."""
    import numpy as np

    from difflens.attention.capture import AttentionCapture
    from difflens.attention.measures import spatial_entropy
    from difflens.attention.words import aggregate_words
    from difflens.models import load_pipeline, resolve_device

    if cfg.seed is None:        # callers that leave the seed open get seed 0, recorded as such
        cfg = replace(cfg, seed=0)
    _validate_config(cfg)
    if pipe is None:
        pipe = load_pipeline(cfg.model, cfg.dtype, resolve_device(cfg.device), cfg.offline)
    plan = plan_attention(cfg, pipe)
    device = plan.denoiser.device
    dtype_name = str(plan.denoiser.dtype).replace("torch.", "")

    seconds: dict[str, float] = {}
    plain = None
    if cfg.image_check:
        t0 = time.perf_counter()
        plain = _generate(plan, cfg.seed)
        seconds["generate_plain"] = time.perf_counter() - t0

    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, cfg.stride, [la.name for la in plan.layers],
                           plan.joint, plan.groups, cfg.word_agg, cfg.breakdown, device)
    encoders = tuple(e for seg in plan.prompt_tokens.segments for e, _ in seg.encoders)
    capture = AttentionCapture(plan.pipe, plan.denoiser, plan.layers, [t.key for t in plan.tokens],
                               plan.prompt_tokens.text_len, plan.latent_hw, agg, images=1, check=True,
                               head_entropy=cfg.breakdown, encoders=encoders,
                               chunk_bytes=plan.estimate["chunk_bytes"])
    callback_steps: list[int] = []
    mismatched: list[tuple[int, int]] = []

    def on_step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        callback_steps.append(int(i))
        if capture.step != i:
            mismatched.append((int(i), capture.step))
        return {}

    t0 = time.perf_counter()
    with capture:
        image = _generate(plan, cfg.seed, on_step_end)
    seconds["generate_with_capture"] = time.perf_counter() - t0
    result = agg.result()

    # -- words -------------------------------------------------------------------------------------
    word_maps = aggregate_words(result.maps, plan.groups, cfg.word_agg).numpy()
    per_step_word = aggregate_words(result.per_step, plan.groups, cfg.word_agg).numpy() if len(
        result.per_step) else np.zeros((0, len(plan.words), *plan.latent_hw), np.float32)
    word_entropy_total = spatial_entropy(word_maps).numpy() if len(plan.words) else np.zeros(0)

    # -- checks ------------------------------------------------------------------------------------
    checks = capture_checks(plan, capture, result, dtype_name)
    if plain is not None:
        same = bool(np.array_equal(plain, image))
        diff = float(np.abs(plain.astype(np.float64) - image.astype(np.float64)).max())
        checks.append(check("image_unchanged_by_capture", same,
                            "image with capture equals the image without capture for the same seed "
                            f"(max abs difference {diff:g})", value=diff))
    if callback_steps:
        checks.append(check("step_alignment", not mismatched and len(callback_steps) == capture.stats.steps,
                             f"the capture's step counter matched the pipeline's step callback on "
                             f"{len(callback_steps) - len(mismatched)}/{len(callback_steps)} steps"))
    if cfg.image_check:
        seconds["capture_overhead_ratio"] = (seconds["generate_with_capture"]
                                             / max(seconds["generate_plain"], 1e-9))

    record = _record(cfg, plan, capture, result, word_entropy_total, checks, seconds, dtype_name, device)
    return AttentionResult(config=cfg, image=image, aggregate=result, word_maps=word_maps,
                           per_step_word_maps=per_step_word, record=record, checks=checks)


def _record(cfg: AttentionConfig, plan: Plan, capture: Any, res: AggregateResult, word_entropy_total: Any,
            checks: list[dict[str, Any]], seconds: dict[str, float], dtype_name: str,
            device: Any) -> dict[str, Any]:
    from difflens.versions import collect_versions

    pt = plan.prompt_tokens
    word_label = {w.index: w.label for w in pt.words}
    tokens = [{"index": i, "key": t.key, "segment": t.segment, "position": t.position, "id": t.id,
               "text": t.text, "word": word_label.get(t.word) if t.word is not None else None, "kind": t.kind}
              for i, t in enumerate(plan.tokens)]
    words = [{"label": w.label, "text": w.text, "occurrence": w.occurrence, "chars": [w.start, w.end],
              "tokens": g} for w, g in zip(plan.words, plan.groups, strict=True)]
    layer_rows = []
    for la, info in zip(plan.layers, capture.info, strict=True):
        layer_rows.append({"name": la.name, "kind": la.kind, "processor": la.processor, "heads": la.heads,
                           "grid": list(info.grid) if info.grid else None, "calls": info.calls,
                           "sum_error": info.sum_error, "route_error": info.route_error,
                           "output_relative_error": info.out_error, "route": info.route,
                           "lse_error": info.lse_error, "lse_drift": info.lse_drift,
                           "checks_reused": info.checks_reused, "fallback_reason": info.fallback_reason})
    steps = res.steps_seen
    entropy = {"steps": steps,
               "words": {w.label: res.word_entropy[:, j].tolist() for j, w in enumerate(plan.words)},
               "tokens": {str(i): res.token_entropy[:, i].tolist() for i in range(len(plan.tokens))}}
    peak = {"steps": steps, "fraction": 0.05,
            "words": {w.label: res.word_peak[:, j].tolist() for j, w in enumerate(plan.words)}}
    rec: dict[str, Any] = {
        "mode": "attention",
        "model": str(cfg.model),
        "pipeline": type(plan.pipe).__name__,
        "family": plan.family,
        "denoiser": plan.denoiser_attr,
        "prompt": cfg.prompt,
        "prompt_tokenized": pt.text,
        "seed": cfg.seed,
        "generator": f'torch.Generator("cpu").manual_seed({cfg.seed})',
        "steps_requested": cfg.steps,
        "steps_run": len(steps),
        "stride": cfg.stride,
        "per_step_indices": res.per_step_index,
        "height": plan.height,
        "width": plan.width,
        "latent_grid": list(plan.latent_hw),
        "call_arguments": {k: v for k, v in plan.call_kwargs.items() if k != "prompt"},
        "dtype": dtype_name,
        "device": str(device),
        "text_sequence": {"length": pt.text_len,
                          "segments": [{"name": s.name, "offset": s.offset, "length": s.length,
                                        "encoders": [e for e, _ in s.encoders]} for s in pt.segments]},
        "tokens": tokens,
        "words": words,
        "word_aggregation": cfg.word_agg,
        "layers": layer_rows,
        "layers_available": len(plan.all_layers),
        "normalization": {"softmax": NORMALIZATION["joint" if plan.joint else "cross"],
                          "aggregation": NORMALIZATION["aggregation"], "resize": "bilinear",
                          "conditional_branch_only": True,
                          "batch_sizes_seen": capture.stats.batch_sizes},
        "entropy_per_step": entropy,
        "peak_concentration_per_step": peak,
        "entropy_all_steps": {w.label: float(word_entropy_total[j]) for j, w in enumerate(plan.words)},
        "checks": checks,
        "memory": {"estimate_bytes": plan.estimate, "stored_bytes": res.stored_bytes,
                   "peak_transient_bytes": capture.stats.peak_transient_bytes,
                   "budget_bytes": int(cfg.max_memory_mb * 2**20)},
        "seconds": seconds,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "versions": collect_versions(),
    }
    if plan.joint and res.text_mass is not None:
        rec["text_mass"] = {"mean": float(res.text_mass.mean()),
                            "per_step_mean": [float(m.mean()) for m in res.text_mass_per_step]}
    if cfg.breakdown:
        rec["head_entropy"] = {k: v.tolist() for k, v in res.head_entropy.items()}
    return rec


def write_outputs(result: AttentionResult, out_dir: str | Path) -> list[Path]:
    """Write image.png, attention.npz, attention.json and attention_maps.png into ``out_dir``."""
    import numpy as np
    from PIL import Image

    from difflens.atomic import save_figure, save_image, save_npz, write_json
    from difflens.attention.plots import plot_word_maps

    out = Path(out_dir)
    agg = result.aggregate
    rec = result.record
    # Build everything first; write only once all of it exists.
    img8 = (np.clip(result.image, 0, 1) * 255).round().astype(np.uint8)
    arrays: dict[str, Any] = {
        "maps": agg.maps.astype(np.float32),
        "per_step": agg.per_step.astype(np.float32),
        "tokens": np.array([t["text"] for t in rec["tokens"]], dtype=str),
        "token_key": np.array([t["key"] for t in rec["tokens"]], dtype=np.int64),
        "per_step_index": np.array(agg.per_step_index, dtype=np.int64),
        "steps": np.array(agg.steps_seen, dtype=np.int64),
        "words": np.array([w["label"] for w in rec["words"]], dtype=str),
        "word_maps": np.asarray(result.word_maps, dtype=np.float32),
        "token_entropy": agg.token_entropy, "token_peak": agg.token_peak,
        "word_entropy": agg.word_entropy, "word_peak": agg.word_peak,
    }
    if agg.text_mass is not None:
        arrays["text_mass"] = agg.text_mass
        arrays["text_mass_per_step"] = agg.text_mass_per_step
        arrays["maps_text_renormalized"] = agg.maps_text_renorm
    if agg.per_layer is not None:
        arrays["per_layer"] = agg.per_layer
    labels = [w["label"] for w in rec["words"]]
    levels = [f"level {row['level']:g}" for row in rec.get("noise_levels", [])] or None
    title = f"{rec['pipeline']}: {rec['prompt']!r}  " + (
        f"(given image, {len(levels)} noise levels, seed {rec['seed']})" if levels else
        f"({rec['steps_run']} steps, seed {rec['seed']})")
    if "text_mass" in rec:
        title += (f"\njoint attention: probability on the word's tokens, softmax over image + text keys "
                  f"(mean text mass {rec['text_mass']['mean']:.2f})")
    fig = plot_word_maps(img8, result.word_maps, result.per_step_word_maps, agg.per_step_index, labels, title,
                         entropy=[rec["entropy_all_steps"][lab] for lab in labels], column_names=levels)
    paths = [out / "image.png", out / "attention.npz", out / "attention.json", out / "attention_maps.png"]
    save_image(paths[0], Image.fromarray(img8))
    save_npz(paths[1], **arrays)
    write_json(paths[2], rec)
    save_figure(paths[3], fig)
    return paths
