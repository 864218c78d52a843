"""CLI for the generate mode: ``difflens generate``."""

from __future__ import annotations

from pathlib import Path

import typer

from difflens.config import RUNTIME
from difflens.generate.options import GenerateOptions

_G = GenerateOptions(num_samples=1)  # the defaults


def register(app: typer.Typer) -> None:
    """Add this mode's commands to the main app."""

    @app.command("generate")
    def generate_command(
        model: str = typer.Option(..., "--model", help="Diffusers pipeline: hub id or local folder."),
        prompts: Path = typer.Option(..., "--prompts",
                                     help="Prompts file: one a line (.txt), or .jsonl/.csv with a 'prompt' "
                                          "column; cycled to reach --num-samples."),
        num_samples: int = typer.Option(..., "--num-samples", help="Number of images to generate."),
        out: Path = typer.Option(..., "--out", help="Output folder (rerun the same command to resume)."),
        steps: int | None = typer.Option(_G.steps, "--steps",
                                            help="Denoising steps (default: the pipeline's default)."),
        guidance: float | None = typer.Option(_G.guidance, "--guidance",
                                                 help="Guidance scale (default: the pipeline's default)."),
        seed: int = typer.Option(_G.seed, "--seed",
                                 help="Run seed; sample i uses a seed derived from (seed, i)."),
        batch_size: int | None = typer.Option(_G.batch_size, "--batch-size",
                                                 help="Images per pipeline call (default: chosen "
                                                      "automatically from measured throughput)."),
        height: int | None = typer.Option(_G.height, "--height", help="Image height in pixels."),
        width: int | None = typer.Option(_G.width, "--width", help="Image width in pixels."),
        negative_prompt: str | None = typer.Option(_G.negative_prompt, "--negative-prompt",
                                                      help="Negative prompt for every sample."),
        dtype: str = typer.Option(RUNTIME.dtype, "--dtype", help="float32, float16 or bfloat16."),
        device: str | None = typer.Option(RUNTIME.device, "--device",
                                             help="cpu, cuda, cuda:1 (default: auto)."),
        offline: bool = typer.Option(RUNTIME.offline, "--offline",
                                     help="Never contact the hub; use the local cache."),
    ) -> None:
        """Generate images from a text-to-image model, resumably, with a manifest of prompts and seeds."""
        from difflens.console import console
        from difflens.generate.api import generate
        from difflens.preflight import preflight

        preflight(folders={"--out": out}, dtype=dtype, device=device)
        report = generate(model, prompts, num_samples, out, steps=steps, guidance=guidance, seed=seed,
                          batch_size=batch_size, height=height, width=width,
                          negative_prompt=negative_prompt, dtype=dtype, device=device, offline=offline)
        from difflens.distributed import is_main

        if not is_main():  # under torchrun rank 0 reports for all ranks
            return
        console.print(f"{report.finished}/{report.num_samples} samples in {report.out_dir} "
                      f"({report.generated} new, {report.resumed} already finished; "
                      f"{report.images_per_s:.2f} img/s at batch size {report.batch_size})")
        for flag, indices in report.flagged.items():
            if indices:
                console.print(f"[yellow]warning:[/] {len(indices)} sample(s) flagged {flag!r} "
                              f"(first: {indices[:5]}); kept on disk, left out of metrics"
                              + (" — try --dtype float32 or bfloat16" if flag in ("nan", "black") else ""))
        if report.truncation.prompts:
            console.print(f"[yellow]warning:[/] {report.truncation.prompts} prompt(s) "
                          f"({report.truncation.samples} samples) were truncated to the text encoder limit "
                          f"{report.truncation.limits}")
