"""CLI: `difflens attention` (per-word cross/joint attention maps of one generation)."""

from __future__ import annotations

from pathlib import Path

import typer


def attention(
    model: str = typer.Option(..., "--model", help="Hub id or local diffusers pipeline folder."),
    prompt: str = typer.Option(..., "--prompt", help="The prompt to generate and analyze."),
    out: Path = typer.Option(..., "--out", help="Output folder: image.png, attention.npz/.json, "
                                                 "attention_maps.png."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps."),
    seed: int = typer.Option(0, "--seed", help='Seed: generator=torch.Generator("cpu").manual_seed(SEED).'),
    height: int | None = typer.Option(None, "--height", help="Image height in pixels "
                                                                          "(default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width in pixels (default: the model's)."),
    layers: str | None = typer.Option(None, "--layers",
                                      help="Comma-separated globs or name fragments of the layers to capture "
                                           "(default: every cross/joint-attention layer)."),
    stride: int = typer.Option(1, "--stride", help="Keep the per-step maps of every "
                                                                    "K-th step (0, K, 2K...)."),
    words: str | None = typer.Option(None, "--words", help="Comma-separated prompt words to map "
                                                           "(default: every word)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: auto)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Guidance scale "
                                                                                "(default: the pipeline's)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    word_agg: str = typer.Option("mean", "--word-agg", help="Aggregate a multi-token word by mean or max."),
    all_tokens: bool = typer.Option(False, "--all-tokens", help="Also map start/end/padding positions."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Also keep per-layer maps and "
                                                                           "per-head entropy."),
    max_memory_mb: float = typer.Option(2048.0, "--max-memory-mb", help="Budget for the capture's "
                                                                                         "maps (MiB)."),
    max_sequence_length: int | None = typer.Option(None, "--max-sequence-length",
                                                   help="T5 sequence length for SD3/Flux/PixArt "
                                                        "(default: the pipeline's)."),
    no_image_check: bool = typer.Option(False, "--no-image-check",
                                        help="Skip the extra generation that proves the capture leaves the "
                                             "image unchanged."),
    offline: bool = typer.Option(False, "--offline", help="Never touch the network."),
) -> None:
    """Map which image regions each prompt word drives, per step and over the whole generation."""
    from difflens.attention.api import AttentionConfig, run_attention, write_outputs
    from difflens.console import console
    from difflens.preflight import preflight

    preflight(folders={"--out": out}, dtype=dtype, device=device)
    word_list = tuple(w.strip() for w in words.split(",") if w.strip()) if words else None
    cfg = AttentionConfig(model=model, prompt=prompt, steps=steps, seed=seed, height=height, width=width,
                          layers=layers, stride=stride, words=word_list, device=device, guidance=guidance,
                          dtype=dtype, word_agg=word_agg, all_tokens=all_tokens, breakdown=breakdown,
                          max_memory_mb=max_memory_mb, image_check=not no_image_check,
                          max_sequence_length=max_sequence_length, offline=offline)
    result = run_attention(cfg)
    paths = write_outputs(result, out)
    rec = result.record
    console.print(f"attention: {len(rec['layers'])} layer(s), {len(rec['tokens'])} token(s), "
                  f"{rec['steps_run']} step(s) -> {out}")
    for label, ent in rec["entropy_all_steps"].items():
        console.print(f"  {label:>16s}  spatial entropy {ent:.3f}")
    bad = [c for c in result.checks if not c["ok"]]
    for c in result.checks:
        mark = "[green]ok[/]" if c["ok"] else "[bold red]FAILED[/]"
        console.print(f"  check {c['name']}: {mark}")
    if bad:
        console.print("[bold red]warning:[/] some invariant checks failed; see attention.json")
    console.print(f"wrote {', '.join(p.name for p in paths)}")


def register(app: typer.Typer) -> None:
    """Add `attention` to the main app."""
    app.command("attention")(attention)
