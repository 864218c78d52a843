"""CLI: `difflens analyze` (every mode, one report), `difflens report` (rebuild, compare runs),
`difflens demo` (offline, the shipped shapes-world models)."""

from __future__ import annotations

from pathlib import Path

import typer


def analyze(
    model: str = typer.Option(..., "--model", help="Hub id or local diffusers pipeline folder."),
    out: Path = typer.Option(..., "--out", help="Run folder: each mode's outputs and report.html."),
    modes: str | None = typer.Option(None, "--modes",
                                     help="Comma list of modes to run (default: the config file's "
                                          "'modes', else metrics,schedule,attention,latent)."),
    real: str | None = typer.Option(None, "--real", help="Reference images for metrics and OOD."),
    prompts: str | None = typer.Option(None, "--prompts", help="Prompts file for generated samples."),
    num_samples: int | None = typer.Option(None, "--num-samples", min=2,
                                              help="Samples to generate for metrics."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt for attention and latent modes."),
    config: Path | None = typer.Option(None, "--config",
                                       help="TOML file: run options at the top level (real, prompts, "
                                            "num_samples, prompt, seed, device, dtype, label, offline, "
                                            "modes) and one table of options per mode; checked before "
                                            "any mode runs."),
    seed: int | None = typer.Option(None, "--seed",
                                    help="Seed of generation, attention and latent (default 0, or the config "
                                         "file's seed); metrics sampling uses 2020, as difflens metrics."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: auto)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, float16 or bfloat16."),
    offline: bool = typer.Option(False, "--offline", help="Never touch the network."),
) -> None:
    """Run the chosen analysis modes on a model and write RUN_DIR/report.html.

    Bad input (options, config file, output folder, device) is an error before any mode runs (exit 2,
    nothing written). A mode that fails while running is shown as an error section in the report while the
    others still run; the exit code is then 1 (0 when every mode succeeded)."""
    from difflens.analyze.config import ALL_MODES, AnalysisConfig, check_run, parse_modes, read_config_file
    from difflens.analyze.runner import run_analysis
    from difflens.preflight import preflight

    file_opts = read_config_file(config) if config else {}
    top = {k: v for k, v in file_opts.items() if not isinstance(v, dict)}
    mode_options = {k: v for k, v in file_opts.items() if isinstance(v, dict)}
    cli = {"real": real, "prompts": prompts, "num_samples": num_samples, "prompt": prompt, "seed": seed,
           "device": device, "dtype": dtype}
    merged = {**top, **{k: v for k, v in cli.items() if v is not None}}
    file_modes = top.get("modes")
    if isinstance(file_modes, list):
        file_modes = ",".join(str(m) for m in file_modes)
    chosen = parse_modes(modes if modes is not None else file_modes or ",".join(ALL_MODES))
    allowed = {"real", "prompts", "num_samples", "prompt", "seed", "device", "dtype", "label"}
    cfg = AnalysisConfig(model=model, out=out, modes=chosen,
                         offline=offline or bool(top.get("offline", False)), mode_options=mode_options,
                         **{k: v for k, v in merged.items() if k in allowed})
    check_run(cfg)
    _check_model(model)
    preflight(folders={"--out": out}, dtype=cfg.dtype, device=cfg.device)
    report_path = run_analysis(cfg)
    failed = _failed_modes(report_path.parent)
    if failed:
        from difflens.console import console

        console.print(f"[bold red]{len(failed)} mode(s) failed:[/] {', '.join(failed)} (see the report)")
        raise typer.Exit(1)


def _check_model(model: str) -> None:
    """A local model must be a pipeline folder; checked before any mode runs or anything is written."""
    from difflens.errors import DifflensError

    path = Path(model).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        raise DifflensError(f"--model {path} is not a diffusers pipeline folder (no model_index.json).",
                            "pass a folder written by save_pretrained, or a hub id")


def _failed_modes(run_dir: Path) -> list[str]:
    import json

    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return [name for name, entry in info["modes"].items() if entry.get("status") == "error"]


def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or several run folders written by `analyze`."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Output HTML file (default: FIRST_RUN/report.html); an existing "
                                         "file is replaced, a folder is refused."),
) -> None:
    """Rebuild report.html from saved outputs; with several runs, compare them side by side."""
    from difflens.console import console
    from difflens.preflight import preflight
    from difflens.report.render import write_report

    default = run_dirs[0] / "report.html" if run_dirs and run_dirs[0].is_dir() else None
    preflight(files={"--out": out} if out is not None else {"the report": default})
    dest = write_report(list(run_dirs), out)
    console.print(f"report: {dest}")


def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", help="Run folder for the demo."),
    modes: str = typer.Option("metrics,schedule,attention,latent", "--modes", help="Comma list of modes."),
) -> None:
    """Run every mode offline on the shapes-world models shipped with difflens (toy models trained in this
    repository on coloured shapes, not real text-to-image models; the Inception network is random-init)."""
    from difflens.analyze.config import parse_modes
    from difflens.demo.run import run_demo
    from difflens.preflight import preflight

    preflight(folders={"--out": out})
    run_demo(out, parse_modes(modes))


def register(app: typer.Typer) -> None:
    """Add analyze, report and demo to the main app."""
    app.command("analyze")(analyze)
    app.command("report")(report)
    app.command("demo")(demo)
