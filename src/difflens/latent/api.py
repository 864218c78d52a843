"""The latent mode's function API: each call validates every input, loads the model, computes, and only then
writes its outputs (each file atomically). The CLI is a thin layer over these functions.

``model`` is a pipeline folder or hub id (loaded with :func:`difflens.models.load_pipeline`) or an already
loaded diffusers pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflens.config import RUNTIME
from difflens.errors import DifflensError
from difflens.latent.config import DirectionConfig, EncodeConfig, InterpolateConfig, OodConfig
from difflens.latent.features import FEATURE_SPACES
from difflens.metrics.config import DEFAULT_CLIP_MODEL

_R, _E, _I, _D, _O = RUNTIME, EncodeConfig(), InterpolateConfig(), DirectionConfig(), OodConfig()  # defaults

LATENT_SUFFIXES = (".npz", ".safetensors")


# --- shared helpers ---------------------------------------------------------------------------------------

def _load(model: Any, dtype: str, device: str | None, offline: bool) -> tuple[Any, str]:
    """(pipeline, model label); errors for pipelines without a VAE or of an unsupported family."""
    from difflens.latent.vae import pipeline_family, require_vae

    if isinstance(model, (str, Path)):
        from difflens.models import load_pipeline

        _precheck_vae(Path(str(model)).expanduser())
        pipe, label = load_pipeline(model, dtype=dtype, device=device, offline=offline), str(model)
    else:
        pipe, label = model, type(model).__name__
    require_vae(pipe)
    pipeline_family(pipe)
    return pipe, label


def _precheck_vae(folder: Path) -> None:
    """A local pipeline folder whose model_index.json lists no VAE is refused before loading anything."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        return  # a hub id, or not a pipeline folder: load_pipeline says so
    try:
        entry = json.loads(index.read_text(encoding="utf-8")).get("vae")
    except (OSError, ValueError, AttributeError):
        return
    if not entry or (isinstance(entry, list) and all(e is None for e in entry)):
        raise DifflensError(f"the model {folder} has no VAE (model_index.json lists none), so it has no "
                            "latent space to probe.",
                            "pass a latent diffusion pipeline with a `vae` component (SD 1.x/2.x/XL, SD3, "
                            "Flux, PixArt)")


def _device_of(pipe: Any) -> str:
    return str(pipe._execution_device)


def _parse_ints(text: str | Sequence[int] | None, what: str) -> list[int] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            out.append(int(item))
        except (TypeError, ValueError):
            raise DifflensError(f"{what}: {item!r} is not an integer.", f"pass e.g. {what} 0,1") from None
    return out


def _check_features(features: str) -> None:
    if features not in FEATURE_SPACES:
        raise DifflensError(f"unknown feature space {features!r}.", f"use one of {', '.join(FEATURE_SPACES)}")


def _check_positive(value: int, what: str) -> None:
    if int(value) < 1:
        raise DifflensError(f"{what} must be at least 1 (got {value}).", f"pass {what} 1 or more")


def _feature_space(name: str, pipe: Any, clip_model: str | Path | None, inception_weights: Any,
                   offline: bool, batch_size: int) -> Any:
    from difflens.latent.features import ClipModel, make_feature_space

    clip = None
    if name == "clip":
        clip = ClipModel(clip_model or DEFAULT_CLIP_MODEL, _device_of(pipe), offline=offline)
    return make_feature_space(name, pipe, clip=clip, inception_weights=inception_weights,
                              device=_device_of(pipe), offline=offline, batch_size=batch_size)


def _settings(pipe: Any, size: int | None, steps: int, guidance: float | None,
              max_sequence_length: int | None) -> Any:
    from difflens.latent.generation import GenerationSettings, resolve_size

    _check_positive(steps, "--steps")
    return GenerationSettings(size=resolve_size(pipe, size), steps=int(steps), guidance=guidance,
                              max_sequence_length=max_sequence_length)


def _print_warnings(lines: list[str]) -> list[str]:
    """Show each warning now (before the slow work) and return them for the result file."""
    if lines:
        from rich.markup import escape

        from difflens.console import console

        for line in lines:
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    return lines


def _remove_stale(folder: Path, pattern: str, keep: Sequence[str]) -> None:
    """Delete this mode's own frame files left in ``folder`` by an earlier, longer run (only files matching
    ``pattern`` that this run does not write), so the folder matches the JSON."""
    if folder.is_dir():
        names = {Path(k).name for k in keep}
        for f in folder.glob(pattern):
            if f.name not in names:
                f.unlink()


def _common(pipe: Any, label: str) -> dict[str, Any]:
    from difflens.latent.vae import pipeline_family, vae_factors
    from difflens.versions import collect_versions

    f = vae_factors(pipe.vae)
    return {"model": label, "pipeline": type(pipe).__name__, "family": pipeline_family(pipe),
            "dtype": str(pipe.dtype).replace("torch.", ""),
            "vae": {"scaling_factor": f["scaling_factor"], "shift_factor": f["shift_factor"],
                    "packed_2x2": hasattr(pipe, "_pack_latents")},
            "versions": collect_versions()}


# --- encode -----------------------------------------------------------------------------------------------

def encode(images: Sequence[str | Path], model: Any, out: str | Path, *, report: str | Path | None = None,
           size: int | None = None, dtype: str = _R.dtype, device: str | None = _R.device,
           offline: bool = _R.offline, batch_size: int = _E.batch_size,
           strict: bool = _E.strict) -> dict[str, Any]:
    """Encode images to the model's normalized latents (written to ``out``: .npz or .safetensors) and
    report the VAE round-trip PSNR per image (``report``, default: ``out`` with suffix .json).

    Unreadable or oversized images are skipped and listed in ``warnings`` (``strict``: an error), by the rule
    of :mod:`difflens.metrics.images`."""
    import numpy as np

    from difflens.atomic import atomic_path, save_npz, write_json
    from difflens.console import progress
    from difflens.latent.images import RESIZE_RULE, iter_image_batches, list_images, screen_images
    from difflens.latent.vae import decode_latents, encode_images, is_packed, pack_latents, psnr

    out = Path(out)
    if out.suffix.lower() not in LATENT_SUFFIXES:
        raise DifflensError(f"--out {out}: the latents file must end in .npz or .safetensors.",
                            "pass e.g. --out latents.npz")
    report_path = Path(report) if report is not None else out.with_suffix(".json")
    if report_path.resolve() == out.resolve():
        raise DifflensError("the report and the latents file are the same path.", "pass a different --report")
    _check_positive(batch_size, "--batch-size")
    files, read_log = screen_images(list_images(images), "images", strict)
    warnings = _print_warnings(read_log.warnings("images"))
    pipe, label = _load(model, dtype, device, offline)
    from difflens.latent.generation import resolve_size

    s = resolve_size(pipe, size)
    chunks, values = [], []
    for batch in progress(iter_image_batches(files, s, batch_size), total=len(files), description="encode"):
        zb = encode_images(pipe, batch, batch_size=batch_size)
        values += psnr(batch, decode_latents(pipe, zb, size=s, batch_size=batch_size))
        chunks.append(zb)
    import torch

    z = torch.cat(chunks)
    arrays = {"latents": z.numpy().astype(np.float32)}
    if is_packed(pipe):
        arrays["latents_packed"] = pack_latents(pipe, z).numpy().astype(np.float32)
    names = [str(f) for f in files]
    if out.suffix.lower() == ".npz":
        save_npz(out, files=np.array(names), **arrays)
    else:
        import json

        from safetensors.numpy import save_file

        with atomic_path(out, suffix=".safetensors") as tmp:
            save_file(arrays, str(tmp), metadata={"files": json.dumps(names)})
    finite = [v for v in values if np.isfinite(v)]
    result = {
        **_common(pipe, label), "latents_file": str(out), "size": s, "resize": RESIZE_RULE.format(size=s),
        "latent_shape": list(z.shape[1:]), "encode": "posterior mode, z = (E(x) - shift) * scale",
        "images": [{"file": n, "psnr": v} for n, v in zip(names, values, strict=True)],
        "psnr_mean": float(np.mean(finite)) if finite else None,
        "psnr_min": float(np.min(values)) if values else None,
        "skipped": [{"file": f, "reason": r} for f, r in read_log.skipped], "warnings": warnings,
    }
    write_json(report_path, result)
    return result


# --- interpolate ------------------------------------------------------------------------------------------

def interpolate(model: Any, out: str | Path, *, prompt: str | None = None, prompt2: str | None = None,
                seeds: str | Sequence[int] | None = None, images: Sequence[str | Path] | None = None,
                frames: int = _I.frames, method: str = _I.method, steps: int = _I.steps,
                guidance: float | None = _I.guidance, size: int | None = _I.size,
                max_sequence_length: int | None = _I.max_sequence_length, features: str = _I.features,
                clip_model: str | Path | None = _I.clip_model, inception_weights: str | Path | None = None,
                dtype: str = _R.dtype, device: str | None = _R.device, offline: bool = _R.offline,
                batch_size: int = _I.batch_size) -> dict[str, Any]:
    """Interpolate between two seeds, two prompts (or both), or two images; write frames, a strip, the
    step-distance plot and ``interpolation.json`` into ``out``."""
    from difflens.atomic import save_image, write_json
    from difflens.latent import interpolate as itp
    from difflens.latent.images import RESIZE_RULE, list_images, load_images, to_pil, to_uint8
    from difflens.latent.plots import save_step_distance_plot, save_strip

    out = Path(out)
    times = itp.frame_times(int(frames))
    if method not in itp.METHODS:
        raise DifflensError(f"unknown --method {method!r}.", f"use one of {', '.join(itp.METHODS)}")
    _check_features(features)
    _check_positive(batch_size, "--batch-size")
    seed_list = _parse_ints(seeds, "--seeds")
    if images is not None:
        if prompt2 is not None or seed_list is not None:
            raise DifflensError("--images interpolates between two images; it does not combine with --seeds "
                                "or --prompt2.", "drop --seeds/--prompt2, or drop --images")
        image_files = list_images(images, "--images")
        if len(image_files) != 2:
            raise DifflensError(f"--images needs exactly 2 images (got {len(image_files)}).",
                                "pass --images A.png,B.png")
    else:
        if not prompt:
            raise DifflensError("--prompt is required to interpolate between seeds or prompts.",
                                "pass --prompt TEXT (and --prompt2 TEXT to interpolate prompts)")
        if seed_list is None:
            seed_list = [0] if prompt2 is not None else [0, 1]
        if len(seed_list) not in (1, 2):
            raise DifflensError(f"--seeds takes one or two seeds (got {len(seed_list)}).", "pass --seeds A,B")
        if prompt2 is None and len(seed_list) != 2:
            raise DifflensError("interpolating between seeds needs two seeds.",
                                "pass --seeds A,B, or --prompt2 to interpolate prompts at one seed")
    pipe, label = _load(model, dtype, device, offline)
    settings = _settings(pipe, size, steps, guidance, max_sequence_length)
    space = _feature_space(features, pipe, clip_model, inception_weights, offline, batch_size)

    if images is not None:
        files, batch = load_images(image_files, settings.size, "--images")
        res = itp.interpolate_images(pipe, batch, len(times), method, settings.size, batch_size=batch_size)
        res.endpoints["images"] = [str(f) for f in files]
        res.endpoints["resize"] = RESIZE_RULE.format(size=settings.size)
    else:
        res = itp.interpolate_seeds_prompts(pipe, prompt, prompt2, seed_list, len(times), method, settings)
    import torch

    stacked = torch.stack(res.frames)
    feats = space(stacked)
    dists = itp.step_distances(feats)
    smooth = itp.smoothness_summary(feats)
    arr = to_uint8(stacked)

    names = [f"frames/frame_{i:03d}.png" for i in range(len(times))]
    records = [{"t": t, "latent_norm_z": z, "step_distance": None if i == 0 else float(dists[i - 1]),
                "file": n}
               for i, (t, z, n) in enumerate(zip(res.times, res.latent_norm_z, names, strict=True))]
    result = {
        **_common(pipe, label), "method": method, "endpoints": res.endpoints,
        "generation": settings.to_json() if images is None else {"size": settings.size, "decode": "VAE only"},
        "feature_space": space.describe(),
        "latent_norm_z_definition": "(||z|| - sqrt(d)) / sqrt(1/2), z = the frame's initial-noise latent "
                                    "(image endpoints: the interpolated image latent)",
        "frames": records, "smoothness": smooth, "strip": "strip.png", "step_plot": "step_distances.png",
    }
    for name, frame in zip(names, arr, strict=True):
        save_image(out / name, to_pil(frame))
    _remove_stale(out / "frames", "frame_*.png", names)
    save_strip(out / "strip.png", list(arr), [f"t={t:.2f}" for t in res.times])
    save_step_distance_plot(out / "step_distances.png", res.times, dists.tolist(), space.name,
                            title=f"{method} between {res.endpoints['kind']}")
    write_json(out / "interpolation.json", result)
    return result


# --- direction --------------------------------------------------------------------------------------------

def direction(model: Any, out: str | Path, *, prompt: str, positives: Sequence[str], negatives: Sequence[str],
              scales: str | Sequence[float] = _D.scales, seed: int = _D.seed, steps: int = _D.steps,
              guidance: float | None = _D.guidance, size: int | None = _D.size,
              max_sequence_length: int | None = _D.max_sequence_length,
              clip_model: str | Path | None = _D.clip_model, dtype: str = _R.dtype,
              device: str | None = _R.device, offline: bool = _R.offline) -> dict[str, Any]:
    """Apply the mean text-embedding difference of the (positive, negative) pairs to ``prompt`` at each scale
    (same seed); write the images, a grid and ``direction.json`` with the CLIP-measured effect.
    ``clip_model=None`` (CLI: ``--clip-model none``) skips the measurement."""
    from difflens.atomic import save_image, write_json
    from difflens.latent import direction as dr
    from difflens.latent.images import to_pil, to_uint8
    from difflens.latent.plots import save_strip

    out = Path(out)
    scale_list = dr.parse_scales(scales) if isinstance(scales, str) else _float_list(scales)
    pairs = dr.check_pairs(list(positives), list(negatives))
    if not prompt:
        raise DifflensError("--prompt (the base prompt) is empty.", "pass --prompt TEXT")
    pipe, label = _load(model, dtype, device, offline)
    settings = _settings(pipe, size, steps, guidance, max_sequence_length)
    clip = None
    if clip_model is not None and str(clip_model).lower() != "none":
        from difflens.latent.features import ClipModel

        clip = ClipModel(clip_model, _device_of(pipe), offline=offline)
    res = dr.run_direction(pipe, prompt, pairs, scale_list, seed, settings)
    import torch

    stacked = torch.stack(res.images)
    arr = to_uint8(stacked)
    names = [f"frames/scale_{i:02d}_{s:+g}.png" for i, s in enumerate(scale_list)]
    effect = dr.clip_effect(clip, stacked, scale_list, pairs) if clip is not None else None
    per_scale = []
    for i, (s, n) in enumerate(zip(scale_list, names, strict=True)):
        row = {"scale": s, "file": n, "clip_positive": None, "clip_negative": None, "clip_margin": None}
        if effect is not None:
            row.update({k: v for k, v in effect["per_scale"][i].items() if k != "scale"})
        per_scale.append(row)
    result = {
        **_common(pipe, label), "prompt": prompt, "pairs": [list(p) for p in pairs], "seed": seed,
        "scales": scale_list, "generation": settings.to_json(),
        "direction": "mean over pairs of E(positive) - E(negative), added to E(prompt) times the scale",
        "clip_model": None if clip is None else clip.source,
        "per_scale": per_scale, "monotonic": None if effect is None else effect["monotonic"],
        "grid": "grid.png",
    }
    for name, frame in zip(names, arr, strict=True):
        save_image(out / name, to_pil(frame))
    _remove_stale(out / "frames", "scale_*.png", names)
    save_strip(out / "grid.png", list(arr), [f"{s:+g}" for s in scale_list])
    write_json(out / "direction.json", result)
    return result


def _float_list(values: Sequence[Any]) -> list[float]:
    from difflens.latent.direction import parse_scales

    return parse_scales(",".join(str(v) for v in values))


# --- ood --------------------------------------------------------------------------------------------------

def ood(model: Any, out: str | Path, *, reference: Sequence[str | Path], test: Sequence[str | Path],
        ood_images: Sequence[str | Path] | None = None, methods: str | Sequence[str] = _O.methods,
        features: str = _O.features, clip_model: str | Path | None = _O.clip_model,
        inception_weights: str | Path | None = None,
        noise_levels: str | Sequence[float] = _O.noise_levels, steps: int = _O.steps, seed: int = _O.seed,
        size: int | None = _O.size, max_sequence_length: int | None = _O.max_sequence_length,
        min_reference: int = _O.min_reference, dtype: str = _R.dtype, device: str | None = _R.device,
        offline: bool = _R.offline, batch_size: int = _O.batch_size,
        strict: bool = _O.strict) -> dict[str, Any]:
    """Score --test (label 0) and --ood (label 1) images against --reference images by each method; write
    ``scores.csv``, ``ood.json`` and one histogram per method into ``out``.

    Unreadable or oversized images are skipped and listed in ``warnings`` (``strict``: an error), by the rule
    of :mod:`difflens.metrics.images`; ``scores.csv`` lists the images that were scored."""
    import csv
    import io

    from difflens.atomic import write_json, write_text
    from difflens.console import console
    from difflens.latent import ood as od
    from difflens.latent.images import RESIZE_RULE, list_images, screen_images
    from difflens.latent.plots import save_score_histogram

    out = Path(out)
    method_list = list(od.METHODS) if methods in ("all", None) else od.parse_methods(methods)
    _check_features(features)
    _check_positive(batch_size, "--batch-size")
    _check_positive(steps, "--steps")
    levels = od.parse_levels(noise_levels, int(steps)) if "reconstruction" in method_list else []
    ref_files, ref_log = screen_images(list_images(reference, "--reference"), "--reference", strict)
    test_files, test_log = screen_images(list_images(test, "--test"), "--test", strict)
    ood_files, ood_log = (screen_images(list_images(ood_images, "--ood"), "--ood", strict) if ood_images
                          else ([], None))
    skipped = [*ref_log.skipped, *test_log.skipped, *(ood_log.skipped if ood_log else [])]
    read_warnings = [*ref_log.warnings("--reference"), *test_log.warnings("--test"),
                     *(ood_log.warnings("--ood") if ood_log else [])]
    warning = od.check_reference_count(len(ref_files), minimum=min_reference)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    read_warnings = _print_warnings(read_warnings)
    pipe, label = _load(model, dtype, device, offline)
    settings = _settings(pipe, size, steps, None, max_sequence_length)
    space = (_feature_space(features, pipe, clip_model, inception_weights, offline, batch_size)
             if "mahalanobis" in method_list else None)

    files = [str(f) for f in test_files + ood_files]
    labels = [0] * len(test_files) + [1] * len(ood_files)
    res = od.score_images(pipe, ref_files, test_files + ood_files, labels, method_list, space, levels,
                          int(steps), seed, settings, batch_size=batch_size)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", *method_list])
    for i, (f, y) in enumerate(zip(files, labels, strict=True)):
        writer.writerow([f, y, *(repr(float(res.scores[m][i])) for m in method_list)])
    summary = {}
    for m in method_list:
        s = res.scores[m]
        summary[m] = {
            "test_mean": float(s[: len(test_files)].mean()),
            "ood_mean": float(s[len(test_files):].mean()) if ood_files else None,
            "reference_in_sample_mean": float(res.reference_scores[m].mean()),
        }
    result = {
        **_common(pipe, label), "n_reference": res.n_reference, "n_test": len(test_files),
        "n_ood": len(ood_files), "size": settings.size, "resize": RESIZE_RULE.format(size=settings.size),
        "methods": {m: dict(res.metrics.get(m, {})) for m in method_list},
        "positive_class": "ood (label 1); higher score = more unusual",
        "score_summary": summary, "details": res.details,
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
        "warnings": [*([warning] if warning else []), *read_warnings],
        "scores": "scores.csv", "histograms": {m: f"hist_{m}.png" for m in method_list},
    }
    write_text(out / "scores.csv", buf.getvalue())
    for m in method_list:
        groups = {"reference (in-sample)": res.reference_scores[m], "test": res.scores[m][: len(test_files)],
                  "ood": res.scores[m][len(test_files):]}
        save_score_histogram(out / f"hist_{m}.png", m, groups)
    write_json(out / "ood.json", result)
    return result
