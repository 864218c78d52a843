"""CLI for the latent mode: `difflens latent encode | interpolate | direction | ood`.

Only typer, the standard library and light difflens modules are imported here; the work happens in
:mod:`difflens.latent.api`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from difflens.config import RUNTIME
from difflens.latent.config import DirectionConfig, EncodeConfig, InterpolateConfig, OodConfig
from difflens.latent.ood import METHODS as OOD_METHODS  # standard library only at import

latent_app = typer.Typer(
    name="latent",
    help="Probe the latent space: VAE round trip, interpolation smoothness, semantic directions, OOD scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_ENC, _INT, _DIR, _OOD = EncodeConfig(), InterpolateConfig(), DirectionConfig(), OodConfig()  # the defaults
_MODEL = typer.Option(..., "--model", help="Hub id or local diffusers pipeline folder.")
_DTYPE = typer.Option(RUNTIME.dtype, "--dtype", help="float32, float16 or bfloat16.")
_DEVICE = typer.Option(RUNTIME.device, "--device", help="cpu, cuda, cuda:N (default: auto).")
_OFFLINE = typer.Option(RUNTIME.offline, "--offline",
                        help="Never touch the network (local files and cache only).")
_HEIGHT = typer.Option(None, "--height", help="Image height in pixels (default: the model's own size). The "
                                               "latent mode works on square images: --width must be equal "
                                               "or left out.")
_WIDTH = typer.Option(None, "--width", help="Image width in pixels (default: the model's own size; equal to "
                                            "--height).")
_SIZE = typer.Option(None, "--size", help="Shorthand for --height N --width N.")
_STRICT = typer.Option(RUNTIME.strict, "--strict",
                       help="Unreadable or oversized images are an error (default: "
                            "skipped with a warning, as in difflens metrics).")
_BATCH = typer.Option(_ENC.batch_size, "--batch-size",  # 8 in every latent command
                        help="Images per VAE / feature / reconstruction batch.")
_MSL = typer.Option(None, "--max-sequence-length",
                    help="T5 token limit for SD3/Flux/PixArt (default: the pipeline's own).")
_GUIDANCE = typer.Option(None, "--guidance", help="Guidance scale (default: the pipeline's).")
_FEATURES_HELP = ("Feature space for distances: vae (the model's VAE encoder, always available), clip "
                  "(--clip-model) or inception (--inception-weights).")


def _side(height: int | None, width: int | None, size: int | None) -> int | None:
    """The square image side from --height/--width/--size (None: the model's own size)."""
    flags = (("--height", height), ("--width", width), ("--size", size))
    given = [(flag, v) for flag, v in flags if v is not None]
    if len({v for _, v in given}) > 1:
        from difflens.errors import DifflensError

        shown = ", ".join(f"{flag} {v}" for flag, v in given)
        raise DifflensError(f"the latent mode works on square images, but {shown} differ.",
                            "pass equal --height and --width (or --size N for both)")
    return given[0][1] if given else None


@latent_app.command("encode")
def encode(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    model: str = _MODEL,
    out: Path = typer.Option(..., "--out", help="Latents file: .npz or .safetensors."),
    report: Path | None = typer.Option(None, "--report",
                                       help="PSNR report JSON (default: OUT with suffix .json)."),
    height: int | None = _HEIGHT,
    width: int | None = _WIDTH,
    size: int | None = _SIZE,
    batch_size: int = _BATCH,
    dtype: str = _DTYPE,
    device: str | None = _DEVICE,
    offline: bool = _OFFLINE,
    strict: bool = _STRICT,
) -> None:
    """Encode images to the model's latents and report the VAE round-trip PSNR.

    Latents are normalized with the VAE's scaling and shift factors (Flux: also stored 2x2-packed).
    """
    from difflens.console import console
    from difflens.latent import api
    from difflens.preflight import preflight

    preflight(files={"--out": out, "--report": report}, dtype=dtype, device=device)
    size = _side(height, width, size)
    res = api.encode(images, model, out, report=report, size=size, dtype=dtype, device=device,
                     offline=offline, batch_size=batch_size, strict=strict)
    mean = res["psnr_mean"]
    console.print(f"{len(res['images'])} images -> {out}; mean PSNR "
                  f"{'n/a' if mean is None else f'{mean:.2f} dB'}", highlight=False)


@latent_app.command("interpolate")
def interpolate(
    model: str = _MODEL,
    out: Path = typer.Option(..., "--out", help="Output folder."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt (required unless --images)."),
    prompt2: str | None = typer.Option(None, "--prompt2", help="Second prompt: interpolate text embeddings."),
    seeds: str | None = typer.Option(None, "--seeds",
                                     help="A,B: interpolate initial noise (default 0,1; with --prompt2 one "
                                          "seed, default 0)."),
    images: str | None = typer.Option(None, "--images", help="X,Y: interpolate the two images' VAE latents."),
    frames: int = typer.Option(_INT.frames, "--frames", help="Number of frames, both ends included (>= 2)."),
    method: str = typer.Option(_INT.method, "--method", help="slerp (keeps the Gaussian norm) or lerp."),
    steps: int = typer.Option(_INT.steps, "--steps", help="Denoising steps per frame."),
    guidance: float | None = _GUIDANCE,
    height: int | None = _HEIGHT,
    width: int | None = _WIDTH,
    size: int | None = _SIZE,
    max_sequence_length: int | None = _MSL,
    features: str = typer.Option(_INT.features, "--features", help=_FEATURES_HELP),
    clip_model: str | None = typer.Option(None, "--clip-model",
                                          help="CLIP for --features clip (default "
                                               "openai/clip-vit-large-patch14)."),
    inception_weights: Path | None = typer.Option(None, "--inception-weights",
                                                  help="Inception weights for --features inception "
                                                       "(default: found as the metrics mode finds them)."),
    batch_size: int = _BATCH,
    dtype: str = _DTYPE,
    device: str | None = _DEVICE,
    offline: bool = _OFFLINE,
) -> None:
    """Interpolate between seeds, prompts or images and measure smoothness.

    Writes frames/, strip.png, step_distances.png and interpolation.json (latent-norm z-score per frame,
    step distances in a feature space, smoothness summary).
    """
    from difflens.console import console
    from difflens.latent import api
    from difflens.preflight import preflight

    preflight(folders={"--out": out}, dtype=dtype, device=device)
    size = _side(height, width, size)
    image_list = [p for p in images.split(",") if p.strip()] if images is not None else None
    res = api.interpolate(model, out, prompt=prompt, prompt2=prompt2, seeds=seeds, images=image_list,
                          frames=frames, method=method, steps=steps, guidance=guidance, size=size,
                          max_sequence_length=max_sequence_length, features=features, clip_model=clip_model,
                          inception_weights=inception_weights, dtype=dtype, device=device, offline=offline,
                          batch_size=batch_size)
    sm = res["smoothness"]
    console.print(f"{len(res['frames'])} frames -> {out}; mean step {sm['mean_step']:.4g}, max/mean "
                  f"{sm['max_over_mean'] if sm['max_over_mean'] is None else round(sm['max_over_mean'], 3)}"
                  f" (largest jump at frame {sm['largest_jump_frame']})", highlight=False)


@latent_app.command("direction")
def direction(
    model: str = _MODEL,
    out: Path = typer.Option(..., "--out", help="Output folder."),
    positive: list[str] = typer.Option(..., "--positive", help="Positive prompt (repeat for more pairs)."),
    negative: list[str] = typer.Option(..., "--negative", help="Negative prompt, paired with --positive."),
    prompt: str = typer.Option(..., "--prompt", help="Base prompt the direction is applied to."),
    scales: str = typer.Option(_DIR.scales, "--scales", help="Comma-separated scales, e.g. -2,-1,0,1,2."),
    seed: int = typer.Option(_DIR.seed, "--seed",
                             help="Seed of the initial noise, the same for every scale."),
    steps: int = typer.Option(_DIR.steps, "--steps", help="Denoising steps per image."),
    guidance: float | None = _GUIDANCE,
    height: int | None = _HEIGHT,
    width: int | None = _WIDTH,
    size: int | None = _SIZE,
    max_sequence_length: int | None = _MSL,
    clip_model: str = typer.Option(_DIR.clip_model, "--clip-model",
                                   help="CLIP that measures the effect (folder or hub id); 'none' skips it."),
    dtype: str = _DTYPE,
    device: str | None = _DEVICE,
    offline: bool = _OFFLINE,
) -> None:
    """Apply a semantic direction (positive minus negative prompts) with scales.

    Writes grid.png, one image per scale and direction.json (CLIP similarity per scale, monotonicity).
    """
    from difflens.console import console
    from difflens.latent import api
    from difflens.preflight import preflight

    preflight(folders={"--out": out}, dtype=dtype, device=device)
    size = _side(height, width, size)
    res = api.direction(model, out, prompt=prompt, positives=positive, negatives=negative, scales=scales,
                        seed=seed, steps=steps, guidance=guidance, size=size,
                        max_sequence_length=max_sequence_length, clip_model=clip_model, dtype=dtype,
                        device=device, offline=offline)
    mono = res["monotonic"]
    tail = "" if mono is None else f"; CLIP margin increases monotonically: {mono['margin_increases']}"
    console.print(f"{len(res['scales'])} scales -> {out}{tail}", highlight=False)


@latent_app.command("ood")
def ood(
    model: str = _MODEL,
    reference: list[Path] = typer.Option(..., "--reference",
                                         help="In-distribution reference images (folder; >= 100 advised)."),
    test: list[Path] = typer.Option(..., "--test", help="Images to score (label 0 in scores.csv)."),
    ood_images: list[Path] | None = typer.Option(None, "--ood",
                                                 help="Known out-of-distribution images (label 1): enables "
                                                      "AUROC, AUPR and FPR95."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    method: str = typer.Option(_OOD.methods, "--method",
                               help=f"Comma list of {', '.join(OOD_METHODS)}, or all (every method)."),
    features: str = typer.Option(_OOD.features, "--features", help=_FEATURES_HELP + " Used by mahalanobis."),
    clip_model: str | None = typer.Option(None, "--clip-model", help="CLIP for --features clip."),
    inception_weights: Path | None = typer.Option(None, "--inception-weights",
                                                  help="Inception weights for --features inception."),
    noise_levels: str = typer.Option(_OOD.noise_levels, "--noise-levels",
                                     help="Reconstruction noise levels (img2img strengths in (0, 1])."),
    steps: int = typer.Option(_OOD.steps, "--steps", help="Schedule length for reconstruction."),
    seed: int = typer.Option(_OOD.seed, "--seed",
                             help="Seed of the reconstruction noise (same for every image)."),
    min_reference: int = typer.Option(_OOD.min_reference, "--min-reference",
                                      help="Refuse to run with fewer reference images than this."),
    height: int | None = _HEIGHT,
    width: int | None = _WIDTH,
    size: int | None = _SIZE,
    max_sequence_length: int | None = _MSL,
    batch_size: int = _BATCH,
    dtype: str = _DTYPE,
    device: str | None = _DEVICE,
    offline: bool = _OFFLINE,
    strict: bool = _STRICT,
) -> None:
    """Out-of-distribution scores by three methods, with AUROC/AUPR/FPR95.

    Writes scores.csv, ood.json (AUROC, AUPR, FPR@95%TPR when --ood is given) and one histogram per method.
    """
    from difflens.console import console
    from difflens.latent import api
    from difflens.preflight import preflight

    preflight(folders={"--out": out}, dtype=dtype, device=device)
    size = _side(height, width, size)
    res = api.ood(model, out, reference=reference, test=test, ood_images=ood_images or None, methods=method,
                  features=features, clip_model=clip_model, inception_weights=inception_weights,
                  noise_levels=noise_levels, steps=steps, seed=seed, size=size,
                  max_sequence_length=max_sequence_length, min_reference=min_reference, dtype=dtype,
                  device=device, offline=offline, batch_size=batch_size, strict=strict)
    for name, m in res["methods"].items():
        if m.get("auroc") is not None:
            console.print(f"{name}: AUROC {m['auroc']:.3f}  AUPR {m['aupr']:.3f}  FPR95 {m['fpr95']:.3f}",
                          highlight=False)
    console.print(f"scores -> {out / 'scores.csv'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `latent` command group to the main app."""
    app.add_typer(latent_app, name="latent")
