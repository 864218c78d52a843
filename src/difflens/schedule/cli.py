"""CLI for the schedule mode: ``difflens schedule SPEC [SPEC ...]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from difflens.schedule.config import ScheduleConfig

_S = ScheduleConfig()  # the defaults


def register(app: typer.Typer) -> None:
    """Add this mode's commands to the main app."""

    @app.command("schedule")
    def schedule(
        specs: list[str] = typer.Argument(
            ..., metavar="SPEC...",
            help="Schedules to compare: a preset (linear, scaled-linear, cosine, zero-snr, sd15, sd21, "
                 "sdxl, sd3, flux), a scheduler_config.json, a pipeline folder (its scheduler/ subfolder) "
                 "or a hub id. Append @SchedulerClass to swap the sampler, e.g. "
                 "sd15@EulerDiscreteScheduler."),
        steps: int = typer.Option(_S.steps, "--steps", min=1, help="Inference steps to trace."),
        spacing: str | None = typer.Option(
            _S.spacing, "--spacing",
            help="Override timestep_spacing: leading, trailing or linspace (default: the config's)."),
        height: int | None = typer.Option(_S.height, "--height", help="Image height in pixels, for dynamic "
                                                                 "shifting (Flux; default 1024)."),
        width: int | None = typer.Option(_S.width, "--width", help="Image width in pixels, for dynamic "
                                                               "shifting (Flux; default 1024)."),
        scheduler: str | None = typer.Option(
            _S.scheduler, "--scheduler",
            help="Swap the sampler class (e.g. EulerDiscreteScheduler) while keeping each model's config, "
                 "for every SPEC without its own @Class."),
        out: Path | None = typer.Option(
            None, "--out", help="Folder for schedule.json, one CSV per schedule and PNG plots (default: "
                                "print the tables only)."),
        json_out: Path | None = typer.Option(
            None, "--json", help="Write the result (schedule.json's content) to this file; - prints only the "
                                 "JSON on stdout (the tables then go to stderr)."),
    ) -> None:
        """Noise schedules on one log-SNR axis: training noise levels, traced inference steps, checks,
        plots."""
        import warnings

        from rich.console import Console

        from difflens.console import console
        from difflens.output import is_stdout, write_result_json
        from difflens.preflight import preflight
        from difflens.schedule.api import analyze_schedules, write_outputs

        preflight(files={"--json": json_out}, folders={"--out": out})
        tables = console if is_stdout(json_out) else Console()  # the tables are the result: stdout

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = analyze_schedules(specs, steps=steps, spacing=spacing, height=height, width=width,
                                       scheduler=scheduler)
            for label, entry in result["schedules"].items():
                tables.print(_table(label, entry))
            if json_out is not None:
                write_result_json(json_out, result)
            if out is not None:
                written = write_outputs(result, out)
                console.print(f"wrote {len(written)} files to {out}: schedule.json, "
                              f"{len(result['schedules'])} CSV, {sum(p.suffix == '.png' for p in written)} "
                              "PNG", highlight=False)
        failing = sum(not c["ok"] for e in result["schedules"].values() for c in e["checks"])
        if failing:
            console.print(f"[bold red]{failing} failing check(s)[/]", highlight=False)


def _num(x: Any) -> str:
    if x is None:
        return "-inf"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if x in (float("inf"), float("-inf")):
            return "+inf" if x > 0 else "-inf"
        return f"{x:+.2f}"
    return str(x)


def _t(x: float) -> str:
    return str(round(x)) if abs(x - round(x)) < 1e-6 else f"{x:.3g}"


def _table(label: str, e: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    inf = e["inference"]
    ts = inf["timesteps"]
    title = (f"[bold]{escape(label)}[/]  {e['class']}  family={e['family']}  "
             f"prediction={e['prediction_type']}"
             + (f"  spacing={e['timestep_spacing']}" if e.get("timestep_spacing") else "")
             + (f"  shift={e['shift']:.3g}" if e.get("shift") not in (None, 1.0) else ""))
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold", expand=False)
    table.add_column("check")
    table.add_column("ok", justify="center")
    table.add_column("detail", overflow="fold", max_width=100)
    lam = e["train"]["log_snr"]
    table.add_row("schedule", "", f"train lambda {_num(lam[0])} .. {_num(e['terminal_log_snr'])}; "
                               f"{inf['num_inference_steps']} steps, {inf['evaluations']} evaluations, t "
                               f"{_t(ts[0])} -> {_t(ts[-1])}" if ts else "")
    for c in e["checks"]:
        if c["ok"]:
            table.add_row(c["name"], "[green]ok[/]", escape(c["message"]))
        else:
            table.add_row(f"[bold red]{c['name']}[/]", "[bold red]FAIL[/]", f"[red]{escape(c['message'])}[/]")
    for n in e["notes"]:
        table.add_row("[dim]note[/]", "", f"[dim]{escape(n)}[/]")
    return table
