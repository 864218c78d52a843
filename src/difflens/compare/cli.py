"""CLI for the compare mode: ``difflens compare --a DIR_A --b DIR_B --metrics ... [--json OUT]``.

Only typer is imported here; the work (and numpy/torch) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this mode's command to the main app."""
    from difflens.compare.config import CompareConfig
    from difflens.config import RUNTIME
    from difflens.metrics.config import EmbeddingConfig

    c, e = CompareConfig(), EmbeddingConfig()  # the defaults (the preference models' as difflens metrics)

    @app.command("compare")
    def compare_command(
        a: str = typer.Option(..., "--a", help="Folder of model A's samples (manifest.jsonl, metadata.jsonl "
                                               "or metadata.csv pairs each image with its prompt)."),
        b: str = typer.Option(..., "--b",
                              help="Folder of model B's samples, generated from the same prompts."),
        metrics: str = typer.Option(..., "--metrics",
                                    help="Comma list of per-image scores: clip (CLIP score) and the "
                                         "registered per-image metrics (hpsv2, pickscore, imagereward when "
                                         "installed)."),
        prompts: str | None = typer.Option(
            None, "--prompts", help="Prompts file (.txt one a line, .jsonl/.csv with a prompt column) for a "
                                    "folder without a manifest: cycled over its sorted image files."),
        caption_column: str | None = typer.Option(
            None, "--caption-column", help="Caption column of the folders' manifest.jsonl, metadata.jsonl "
                                           "or metadata.csv (default: the first of prompt, text, caption)."),
        bootstrap: int = typer.Option(c.bootstrap, "--bootstrap",
                                      help="Resamples of the prompts (paired: the same prompts for A and B) "
                                           "for the 95% intervals; 0: no intervals and no verdict."),
        seed: int = typer.Option(c.seed, "--seed", help="Seed of the bootstrap resampling."),
        batch_size: int = typer.Option(c.batch_size, "--batch-size",
                                       help="Images per forward pass of the scoring models."),
        clip_model: str = typer.Option(c.clip_model, "--clip-model",
                                       help="CLIP model (hub id or folder) for --metrics clip."),
        hpsv2_checkpoint: str | None = typer.Option(
            e.hpsv2_checkpoint, "--hpsv2-checkpoint",
            help="HPS checkpoint (.pt) for hpsv2, as difflens metrics (with --offline: required)."),
        hpsv2_arch: str = typer.Option(e.hpsv2_arch, "--hpsv2-arch",
                                       help="open_clip architecture name or model-config JSON for hpsv2."),
        hpsv2_version: str = typer.Option(e.hpsv2_version, "--hpsv2-version",
                                          help="HPS version: 2.1 or 2.0."),
        pickscore_model: str = typer.Option(e.pickscore_model, "--pickscore-model",
                                            help="PickScore CLIPModel (hub id or folder) for pickscore."),
        preference_dtype: str = typer.Option(e.preference_dtype, "--preference-dtype",
                                             help="float32, or float16/bfloat16 autocast (GPU) for hpsv2 and "
                                                  "pickscore."),
        imagereward_checkpoint: str | None = typer.Option(
            e.imagereward_checkpoint, "--imagereward-checkpoint",
            help="ImageReward.pt for imagereward, loaded strictly (as difflens metrics)."),
        imagereward_tokenizer: str = typer.Option(e.imagereward_tokenizer, "--imagereward-tokenizer",
                                                  help="Tokenizer of imagereward (hub id or folder)."),
        imagereward_config: str | None = typer.Option(e.imagereward_config, "--imagereward-config",
                                                      help="med_config.json of the imagereward network."),
        device: str | None = typer.Option(RUNTIME.device, "--device",
                                          help="cpu or cuda (default: cuda when available)."),
        offline: bool = typer.Option(RUNTIME.offline, "--offline",
                                     help="Never download weights (also set by HF_HUB_OFFLINE=1 or "
                                          "DIFFLENS_OFFLINE=1)."),
        strict: bool = typer.Option(c.strict, "--strict",
                                    help="Unreadable images are an error (default: left out with a "
                                         "warning)."),
        json_out: Path | None = typer.Option(
            None, "--json",
            help="Write the comparison as JSON to this file; - prints only the JSON on stdout."),
        report: Path | None = typer.Option(None, "--report",
                                           help="Write the comparison as a self-contained HTML page."),
    ) -> None:
        """Compare two models' samples from the same prompts, prompt by prompt: mean difference and win rate
        of A over B per metric, with 95% intervals from a paired bootstrap over prompts, and a verdict."""
        from difflens.compare.api import compare, render
        from difflens.console import console
        from difflens.output import is_stdout, write_result_json
        from difflens.preflight import preflight

        preflight(files={"--json": json_out, "--report": report}, device=device)
        from difflens.metrics.config import preference_options

        options = preference_options(  # as difflens metrics passes them to the route
            hpsv2_checkpoint=hpsv2_checkpoint, hpsv2_arch=hpsv2_arch, hpsv2_version=hpsv2_version,
            pickscore_model=pickscore_model, imagereward_checkpoint=imagereward_checkpoint,
            imagereward_tokenizer=imagereward_tokenizer, imagereward_config=imagereward_config,
            dtype=preference_dtype)
        record = compare(a, b, metrics, prompts=prompts, caption_column=caption_column, bootstrap=bootstrap,
                         seed=seed, batch_size=batch_size, clip_model=clip_model, metric_options=options,
                         device=device, offline=offline, strict=strict)
        to_stdout = is_stdout(json_out)
        page = None
        if report is not None:
            from difflens.report.comparison import comparison_html

            page = comparison_html(record)  # rendered before anything is written
        if json_out is not None:
            write_result_json(json_out, record)
        if page is not None and report is not None:
            from difflens.atomic import write_text

            write_text(report, page)
        render(record, console=console if to_stdout else None)
        for flag, path in (("--json", json_out), ("--report", report)):
            if path is not None and not is_stdout(path):
                line = f"wrote {path} ({flag})"
                if to_stdout:
                    console.print(line, highlight=False, soft_wrap=True, markup=False)
                else:
                    typer.echo(line)
