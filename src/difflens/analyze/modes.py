"""One function per mode: run it for an analysis config and write its outputs under RUN_DIR/<mode>.

Each returns optional extras for run.json (`fingerprints`, `notes`). Options come from the config's
per-mode table; unknown option names are errors, so a typo in analysis.toml never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from difflens.analyze.config import AnalysisConfig
from difflens.attention.config import AttentionConfig
from difflens.config import defaults
from difflens.errors import DifflensError
from difflens.latent.config import InterpolateConfig, OodConfig
from difflens.metrics.config import EmbeddingConfig, GenerationRequest, MetricsConfig
from difflens.schedule.config import ScheduleConfig

#: Each mode's config (the single source of defaults, shared with the CLI and the Python API).
_METRICS, _EMBEDDING = MetricsConfig(), EmbeddingConfig()
_GENERATION = GenerationRequest(model="", num_samples=0)
_SCHEDULE, _ATTENTION = ScheduleConfig(), AttentionConfig("", "")
_INTERPOLATE, _OOD = InterpolateConfig(), OodConfig()

#: Where analyze's defaults deliberately differ from the single-command defaults (and why).
ANALYZE_OVERRIDES: dict[str, dict[str, Any]] = {
    "metrics": {"metrics": "fid,kid,is,pr,dc",  # every Inception metric by name (generated + real images)
                "per_prompt": True},  # the report shows the worst-aligned prompts when clip is asked for
    "latent": {"frames": 6, "steps": 20},  # one steps value serves interpolation and OOD reconstruction
}

#: The options of each mode's table in analysis.toml, with their defaults. `read_config_file` checks a
#: file's keys (and value types) against these before any mode runs.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "metrics": {"metrics": ANALYZE_OVERRIDES["metrics"]["metrics"], "bootstrap": _METRICS.bootstrap,
                "inception_weights": None, "protocol": _METRICS.protocol, "batch_size": _METRICS.batch_size,
                "kid_subset_size": _METRICS.kid_subset_size, "steps": _GENERATION.steps,
                "guidance": _GENERATION.guidance, "height": _GENERATION.height, "width": _GENERATION.width,
                "samples_dir": _GENERATION.samples_dir, "embedding_metrics": None,
                "clip_model": _EMBEDDING.clip_model, "cmmd_clip_model": _EMBEDDING.cmmd_clip_model,
                "dinov2_model": _EMBEDDING.dinov2_model,
                "per_prompt": ANALYZE_OVERRIDES["metrics"]["per_prompt"]},
    "schedule": {**defaults(_SCHEDULE, ("steps", "spacing", "height", "width", "scheduler")), "compare": []},
    "attention": defaults(_ATTENTION, ("steps", "height", "width", "layers", "stride", "words", "guidance",
                                       "word_agg", "max_sequence_length")),
    "latent": {"frames": ANALYZE_OVERRIDES["latent"]["frames"], "method": _INTERPOLATE.method,
               "steps": ANALYZE_OVERRIDES["latent"]["steps"], "seeds": None, "size": _INTERPOLATE.size,
               "features": _INTERPOLATE.features, "clip_model": _INTERPOLATE.clip_model,
               "inception_weights": None, "max_sequence_length": _INTERPOLATE.max_sequence_length,
               "ood_reference": None, "ood_test": None, "ood_images": None, "ood_methods": _OOD.methods,
               "ood_noise_levels": _OOD.noise_levels},
}


def _take(options: dict[str, Any], mode: str) -> dict[str, Any]:
    """The mode's defaults updated by its table (already checked by `read_config_file`; checked again for
    configs built in code)."""
    from difflens.analyze.config import check_mode_options

    check_mode_options(mode, options)
    return {**MODE_DEFAULTS[mode], **options}


def run_schedule(cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    """The model's own schedule plus any extra specs (presets) for comparison."""
    from difflens.schedule.api import analyze_schedules, write_outputs

    opts = _take(cfg.options("schedule"), "schedule")
    specs = [cfg.model, *opts["compare"]]
    result = analyze_schedules(specs, steps=opts["steps"], spacing=opts["spacing"], height=opts["height"],
                               width=opts["width"], scheduler=opts["scheduler"])
    write_outputs(result, out)
    return {}


def run_metrics(cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    """Generate samples from the prompts (resumable, into RUN_DIR/metrics/samples), then the Inception
    metrics against --real and the embedding metrics (CLIP score, CMMD, FD-DINOv2) listed in
    `embedding_metrics`, through the same function as `difflens metrics`."""
    from difflens.atomic import write_json
    from difflens.metrics.evaluate import GenerationRequest, evaluate

    opts = _take(cfg.options("metrics"), "metrics")
    if not cfg.real:
        raise DifflensError("the metrics mode needs reference images.", "pass --real FOLDER")
    if not cfg.prompts:
        raise DifflensError("the metrics mode of analyze needs prompts to generate samples.",
                            "pass --prompts FILE (one prompt a line)")
    names = ",".join(filter(None, [opts["metrics"], opts["embedding_metrics"]]))
    generation = GenerationRequest(model=cfg.model, num_samples=cfg.num_samples,
                                   samples_dir=opts["samples_dir"] or str(out / "samples"),
                                   steps=opts["steps"], guidance=opts["guidance"], seed=cfg.seed,
                                   height=opts["height"], width=opts["width"], dtype=cfg.dtype)
    result = evaluate(cfg.real, None, names, prompts=cfg.prompts, generation=generation,
                      clip_model=opts["clip_model"], cmmd_clip_model=opts["cmmd_clip_model"],
                      dinov2_model=opts["dinov2_model"],
                      per_prompt=bool(opts["per_prompt"] and opts["embedding_metrics"]
                                      and "clip" in opts["embedding_metrics"]),
                      offline=cfg.offline, device=cfg.device, protocol=opts["protocol"],
                      inception_weights=opts["inception_weights"], batch_size=opts["batch_size"],
                      seed=_METRICS.seed,  # sampling seed as in difflens metrics; cfg.seed drives generation
                      bootstrap=opts["bootstrap"], kid_subset_size=opts["kid_subset_size"])
    write_json(out / "metrics.json", result)
    notes = [w for w in result.get("warnings", []) if "random" in w.lower()]
    return {"fingerprints": {"metrics": result.get("protocol", {})}, "notes": notes}


def run_attention(cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    from difflens.attention.api import AttentionConfig, run_attention, write_outputs

    opts = _take(cfg.options("attention"), "attention")
    words = tuple(w.strip() for w in opts.pop("words").split(",")) if opts.get("words") else None
    acfg = AttentionConfig(model=cfg.model, prompt=cfg.prompt, seed=cfg.seed, device=cfg.device,
                           dtype=cfg.dtype, offline=cfg.offline, words=words,
                           **{k: v for k, v in opts.items() if k != "words"})
    write_outputs(run_attention(acfg), out)
    return {}


def run_latent(cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    """Seed interpolation for the prompt, and OOD scoring when reference/test image folders are given."""
    from difflens.latent.api import interpolate, ood

    opts = _take(cfg.options("latent"), "latent")
    common = {"steps": opts["steps"], "size": opts["size"],
              "max_sequence_length": opts["max_sequence_length"], "dtype": cfg.dtype,
              "device": cfg.device, "offline": cfg.offline}
    seeds = opts["seeds"] or f"{cfg.seed},{cfg.seed + 1}"
    interpolate(cfg.model, out / "interpolation", prompt=cfg.prompt, seeds=seeds, frames=opts["frames"],
                method=opts["method"], features=opts["features"], clip_model=opts["clip_model"],
                inception_weights=opts["inception_weights"], **common)
    if opts["ood_reference"] and opts["ood_test"]:
        ood(cfg.model, out / "ood", reference=[opts["ood_reference"]], test=[opts["ood_test"]],
            ood_images=[opts["ood_images"]] if opts["ood_images"] else None, methods=opts["ood_methods"],
            noise_levels=opts["ood_noise_levels"],
            features=opts["features"], clip_model=opts["clip_model"],
            inception_weights=opts["inception_weights"], seed=cfg.seed, **common)
    return {}


MODE_RUNNERS: dict[str, Callable[[AnalysisConfig, Path], dict[str, Any] | None]] = {
    "metrics": run_metrics,
    "schedule": run_schedule,
    "attention": run_attention,
    "latent": run_latent,
}
