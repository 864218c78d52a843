"""The `difflens` command: a thin typer app; each mode registers its own commands.

Bad input raises :class:`difflens.errors.DifflensError`, printed here as one line (exit 2). Ctrl-C prints
one "interrupted: ..." line naming what stopped and how to resume (exit 130). Results go to stdout,
everything else to stderr; third-party warnings, logs and progress bars are hidden unless ``--verbose``.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from difflens import __version__
from difflens.errors import DifflensError
from difflens.interrupt import EXIT_INTERRUPTED, Interrupted


class _Stopped(BaseException):
    """Ctrl-C carried past typer, which would turn a KeyboardInterrupt into a silent exit 130."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class _Group(TyperGroup):
    """The root group: turns Ctrl-C anywhere in a command into its one-line report."""

    def invoke(self, ctx: Any) -> Any:
        from difflens.atomic import written

        protected = getattr(ctx, "_protected_args", None)  # click >= 8.2; older: the public name
        args = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        before = written()[0]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(_interrupt_line(self._command_name(ctx, args), exc, before)) from None

    def _command_name(self, ctx: Any, args: list[str]) -> str:
        """``stats build`` from ``stats build --real ...``: the leading tokens that name commands (typer
        may bring its own copy of click, so groups are recognized by their ``get_command``)."""
        parts: list[str] = []
        cmd: Any = self
        for token in args:
            sub = cmd.get_command(ctx, token) if hasattr(cmd, "get_command") else None
            if sub is None:
                break
            parts.append(token)
            cmd = sub
        return " ".join(parts) or "difflens"


def _interrupt_line(name: str, exc: KeyboardInterrupt, written_before: int) -> str:
    from difflens.atomic import written

    if isinstance(exc, Interrupted):
        return f"interrupted: {exc.message}"
    count, last = written()
    n = count - written_before
    if n == 0:
        return f"interrupted: {name} stopped; nothing written"
    return (f"interrupted: {name} stopped after writing {n} complete file(s) (last: {last}); nothing "
            "half-written was left")


app = typer.Typer(
    name="difflens",
    cls=_Group,
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
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", envvar="DIFFLENS_VERBOSE",
                                 help="Also show third-party warnings, logs and progress bars (torch, numpy, "
                                      "transformers, diffusers, huggingface_hub). Accepted anywhere on the "
                                      "command line."),
) -> None:
    """Analyze pre-trained diffusion models: metrics, noise schedules, attention maps, latent space.

    Results go to stdout (a metrics table, `stats list`, JSON with --json -), diagnostics to stderr."""
    from difflens.console import library_output

    ctx.with_resource(library_output(verbose))


def _register_modes() -> None:
    """Each mode's cli module imports only typer at module level."""
    from difflens.analyze import cli as analyze_cli
    from difflens.attention import cli as attention_cli
    from difflens.compare import cli as compare_cli
    from difflens.generate import cli as generate_cli
    from difflens.latent import cli as latent_cli
    from difflens.metrics import cli as metrics_cli
    from difflens.refsets import cli as refsets_cli
    from difflens.schedule import cli as schedule_cli

    modes = (metrics_cli, compare_cli, generate_cli, refsets_cli, schedule_cli, attention_cli, latent_cli,
             analyze_cli)
    for module in modes:
        module.register(app)


_register_modes()


def _hoist_verbose(args: list[str]) -> list[str]:
    """Move ``-v``/``--verbose`` (a root option) to the front wherever it was typed, up to a ``--``."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in ("-v", "--verbose")]
    return flags + [a for a in args[:end] if a not in ("-v", "--verbose")] + args[end:]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning DifflensError into one clear line and exit code 2, and Ctrl-C into
    one "interrupted: ..." line and exit code 130.

    Usage errors (unknown flags, bad values) are reported by click itself with exit code 2.
    """
    args = _hoist_verbose(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args)
    except DifflensError as err:
        from rich.markup import escape

        from difflens.console import console

        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _Stopped as stop:
        print(stop.line, file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # before any command started (while parsing the command line)
        print("interrupted: nothing written", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
