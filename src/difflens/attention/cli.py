"""CLI: `difflens attention` (per-word cross/joint attention maps of one generation, or of a given image
with ``--image``) and `difflens attention score` (faithfulness of runs against masks)."""

from __future__ import annotations

from pathlib import Path

import typer

from difflens.attention.config import AttentionConfig
from difflens.errors import DifflensError

_A = AttentionConfig("", "")  # the defaults

attention_app = typer.Typer(
    name="attention",
    help="Per-word attention maps of a generation or of a given image (--image); `score` rates maps "
         "against masks.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Options that only make sense when difflens generates the image.
_GENERATION_ONLY = ("--steps", "--height", "--width", "--stride", "--guidance")


@attention_app.callback()
def attention(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", help="Hub id or local diffusers pipeline folder."),
    prompt: str | None = typer.Option(None, "--prompt", help="The prompt to generate (or, with --image, "
                                                             "to condition on) and analyze."),
    out: Path | None = typer.Option(None, "--out", help="Output folder: image.png, attention.npz/.json, "
                                                        "attention_maps.png."),
    image: Path | None = typer.Option(None, "--image", help="Analyze this image instead of generating one: "
                                                            "VAE-encoded, noised to each --noise-level, one "
                                                            "denoiser pass per level. Never resized."),
    noise_level: list[str] | None = typer.Option(None, "--noise-level",
                                                 help="With --image: noise level in (0, 1], the fraction of "
                                                      "the training noise range (VP: timestep round(L(T-1)); "
                                                      "flow matching: sigma = L). Repeat or comma-separate "
                                                      "for several."),
    steps: int | None = typer.Option(None, "--steps", help=f"Denoising steps (default {_A.steps})."),
    seed: int = typer.Option(_A.seed, "--seed",
                             help='Seed: generator=torch.Generator("cpu").manual_seed(SEED) '
                                  "(with --image: the noise added to the latent)."),
    height: int | None = typer.Option(None, "--height", help="Image height in pixels "
                                                             "(default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width in pixels (default: the model's)."),
    layers: str | None = typer.Option(None, "--layers",
                                      help="Comma-separated globs or name fragments of the layers to capture "
                                           "(default: every cross/joint-attention layer)."),
    stride: int | None = typer.Option(None, "--stride", help="Keep the per-step maps of every K-th step "
                                                             f"(0, K, 2K...; default {_A.stride})."),
    words: str | None = typer.Option(None, "--words", help="Comma-separated prompt words to map "
                                                           "(default: every word)."),
    device: str | None = typer.Option(_A.device, "--device", help="cpu, cuda, cuda:N (default: auto)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Guidance scale "
                                                                   "(default: the pipeline's)."),
    dtype: str = typer.Option(_A.dtype, "--dtype", help="float32, float16 or bfloat16."),
    word_agg: str = typer.Option(_A.word_agg, "--word-agg",
                                 help="Aggregate a multi-token word by mean or max."),
    all_tokens: bool = typer.Option(_A.all_tokens, "--all-tokens",
                                    help="Also map start/end/padding positions."),
    breakdown: bool = typer.Option(_A.breakdown, "--breakdown", help="Also keep per-layer maps and "
                                                              "per-head entropy."),
    max_memory_mb: float = typer.Option(_A.max_memory_mb, "--max-memory-mb", help="Budget for the capture's "
                                                                        "maps (MiB)."),
    max_sequence_length: int | None = typer.Option(_A.max_sequence_length, "--max-sequence-length",
                                                   help="T5 sequence length for SD3/Flux/PixArt "
                                                        "(default: the pipeline's)."),
    no_image_check: bool = typer.Option(not _A.image_check, "--no-image-check",
                                        help="Skip the extra generation (with --image: the extra denoiser "
                                             "passes) that proves the capture changes nothing."),
    offline: bool = typer.Option(_A.offline, "--offline", help="Never touch the network."),
) -> None:
    """Map which image regions each prompt word drives, per step and over the whole generation (or per
    noise level on a given image with --image)."""
    if ctx.invoked_subcommand is not None:
        return
    from difflens.attention.api import run_attention, write_outputs
    from difflens.preflight import preflight

    for flag, value in (("--model", model), ("--prompt", prompt), ("--out", out)):
        if value is None:
            raise DifflensError(f"missing option {flag}.",
                                "pass --model M --prompt P --out DIR (see difflens attention --help)")
    preflight(folders={"--out": out}, dtype=dtype, device=device)
    word_list = tuple(w.strip() for w in words.split(",") if w.strip()) if words else None
    if image is not None:
        from difflens.attention.given_image import (
            ImageAttentionConfig,
            parse_noise_levels,
            run_attention_on_image,
        )

        given = {"--steps": steps, "--height": height, "--width": width, "--stride": stride,
                 "--guidance": guidance}
        extra = [flag for flag in _GENERATION_ONLY if given[flag] is not None]
        if extra:
            raise DifflensError(f"{', '.join(extra)} applies to generation, not to a given --image (one "
                                "denoiser pass per noise level, at the image's own size, without guidance).",
                                f"drop {', '.join(extra)}, or drop --image to generate")
        if not noise_level:
            raise DifflensError("--image needs --noise-level.",
                                "pass one or more levels in (0, 1], e.g. --noise-level 0.3,0.6")
        icfg = ImageAttentionConfig(model=model, prompt=prompt, image=str(image),
                                    noise_levels=parse_noise_levels(",".join(noise_level)), seed=seed,
                                    layers=layers, words=word_list, device=device, dtype=dtype,
                                    word_agg=word_agg, all_tokens=all_tokens, breakdown=breakdown,
                                    max_memory_mb=max_memory_mb, max_sequence_length=max_sequence_length,
                                    offline=offline, prediction_check=not no_image_check)
        result = run_attention_on_image(icfg)
    else:
        if noise_level:
            raise DifflensError("--noise-level applies to a given image.",
                                "pass --image IMG with it, or drop --noise-level to generate")
        cfg = AttentionConfig(model=model, prompt=prompt, steps=_A.steps if steps is None else steps,
                              seed=seed, height=height, width=width, layers=layers,
                              stride=_A.stride if stride is None else stride, words=word_list, device=device,
                              guidance=guidance, dtype=dtype,
                              word_agg=word_agg, all_tokens=all_tokens, breakdown=breakdown,
                              max_memory_mb=max_memory_mb, image_check=not no_image_check,
                              max_sequence_length=max_sequence_length, offline=offline)
        result = run_attention(cfg)
    paths = write_outputs(result, out)
    _print_run(result, out, [p.name for p in paths])


def _print_run(result: object, out: Path, names: list[str]) -> None:
    from difflens.console import console

    rec = result.record  # type: ignore[attr-defined]
    what = (f"{len(rec['noise_levels'])} noise level(s)" if "noise_levels" in rec
            else f"{rec['steps_run']} step(s)")
    console.print(f"attention: {len(rec['layers'])} layer(s), {len(rec['tokens'])} token(s), {what} -> {out}")
    for label, ent in rec["entropy_all_steps"].items():
        console.print(f"  {label:>16s}  spatial entropy {ent:.3f}")
    checks = result.checks  # type: ignore[attr-defined]
    for c in checks:
        mark = "[green]ok[/]" if c["ok"] else "[bold red]FAILED[/]"
        console.print(f"  check {c['name']}: {mark}")
    if any(not c["ok"] for c in checks):
        console.print("[bold red]warning:[/] some invariant checks failed; see attention.json")
    console.print(f"wrote {', '.join(names)}")


@attention_app.command("score")
def score(
    runs: list[Path] = typer.Argument(..., help="Attention output folders (attention.json + .npz)."),
    masks: list[str] = typer.Option(..., "--masks", help="Masks of each run, in the order of the runs: a "
                                                        "folder with one WORD.png per word (grayscale >= "
                                                        "128 inside), or shapes:SEED (the shapes world's)."),
    out: Path | None = typer.Option(None, "--out", help="Write the scores as JSON to this file."),
) -> None:
    """Score attention maps against ground-truth masks: mIoU at the DAAM threshold 0.4 and over a sweep,
    pointing game, mask AUROC; per word, per step (or noise level) and per layer group."""
    from difflens.attention.scoring import score_runs, write_score
    from difflens.console import console
    from difflens.preflight import preflight

    preflight(files={"--out": out})
    rec = score_runs(runs, masks)

    def line(name: str, s: dict) -> str:
        auc = "n/a" if s["auroc"] is None else f"{s['auroc']:.3f}"
        return (f"  {name:>24s}  n={s['n']:<4d} mIoU@0.4 {s['miou']:.3f}  best {s['best_miou']:.3f} "
                f"@{s['best_threshold']:g}  pointing {s['pointing']:.3f}  AUROC {auc}")

    console.print(f"attention score: {len(runs)} run(s)", highlight=False)
    console.print(line("overall", rec["overall"]), highlight=False)
    for title, key in (("per word", "per_word"), ("per step / noise level", "per_step"),
                       ("per layer group", "per_layer_group")):
        if rec[key]:
            console.print(f"{title}:", highlight=False)
            for name, s in rec[key].items():
                console.print(line(name, s), highlight=False)
    for w in rec["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if out is not None:
        console.print(f"wrote {write_score(rec, out)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `attention` command (and its `score` subcommand) to the main app."""
    app.add_typer(attention_app, name="attention")
