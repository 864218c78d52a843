"""The `difflens` command: a thin typer app; each mode registers its own commands.

Bad input raises :class:`difflens.errors.DifflensError`, printed here as one line (exit 2).
"""

from __future__ import annotations

import sys

import typer

from difflens import __version__
from difflens.errors import DifflensError

app = typer.Typer(
    name="difflens",
    help="Analyze pre-trained diffusion models: metrics, noise schedules, attention maps, latent space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"difflens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Analyze pre-trained diffusion models: metrics, noise schedules, attention maps, latent space."""


def _register_modes() -> None:
    """Each mode's cli module imports only typer at module level."""
    from difflens.analyze import cli as analyze_cli
    from difflens.attention import cli as attention_cli
    from difflens.generate import cli as generate_cli
    from difflens.latent import cli as latent_cli
    from difflens.metrics import cli as metrics_cli
    from difflens.refsets import cli as refsets_cli
    from difflens.schedule import cli as schedule_cli

    modes = (metrics_cli, generate_cli, refsets_cli, schedule_cli, attention_cli, latent_cli, analyze_cli)
    for module in modes:
        module.register(app)


_register_modes()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning DifflensError into one clear line and exit code 2.

    Usage errors (unknown flags, bad values) are reported by click itself with exit code 2.
    """
    try:
        app(args=argv)
    except DifflensError as err:
        from rich.markup import escape

        from difflens.console import console

        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
