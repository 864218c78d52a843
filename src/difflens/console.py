"""Terminal output: one rich console on stderr, a progress helper for long work, and the switch that keeps
third-party libraries quiet unless ``--verbose``.

stdout carries results only (a metrics table, ``stats list``, JSON with ``--json -``); every diagnostic,
progress line and warning goes to stderr through :data:`console`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console

T = TypeVar("T")

#: soft_wrap: a long line (a path in a warning) is never broken at the console width, so a log file or a
#: pipe keeps every path whole and greppable; tables still lay out to the width.
console = Console(stderr=True, soft_wrap=True)

#: Off a terminal (a log file, a pipe, CI), progress is a plain line at least this often, and at the end.
PROGRESS_LOG_INTERVAL_S: float = 30.0

#: Libraries whose loggers are set to ERROR unless --verbose, with the variable each reads at import.
_LIBRARY_LOGGERS = {"transformers": "TRANSFORMERS_VERBOSITY", "diffusers": "DIFFUSERS_VERBOSITY",
                    "huggingface_hub": "HF_HUB_VERBOSITY", "datasets": "DATASETS_VERBOSITY"}
#: Read at import by huggingface_hub (download bars) and transformers ("Loading weights" bars).
_BARS_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


class DifflensWarning(UserWarning):
    """A Python warning of difflens's own: shown even when third-party warnings are silenced."""


def format_seconds(s: float) -> str:
    """``H:MM:SS``, or ``?`` for an unknown (infinite or NaN) duration."""
    if s != s or s in (float("inf"), float("-inf")):
        return "?"
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(description: str, done: int, total: int | None, rate: float, unit: str) -> str:
    """One plain progress line: ``desc: 120/500 (3.41 img/s, 0:01:51 left)``."""
    count = f"{done}/{total}" if total is not None else str(done)
    left = format_seconds((total - done) / rate) if total is not None and rate > 0 else "?"
    return f"{description}: {count} ({rate:.2f} {unit}/s, {left} left)"


def progress(items: Iterable[T], total: int | None, description: str, unit: str = "img") -> Iterator[T]:
    """Iterate with a progress bar showing rate and time left; ``total`` counts units, advance by len(item)
    when the item has a length (batches), else by one. Off a terminal: a plain line on stderr at least every
    :data:`PROGRESS_LOG_INTERVAL_S` seconds and one at the end."""
    if not console.is_terminal:
        yield from _plain_progress(items, total, description, unit)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")
        for item in items:
            yield item
            bar.advance(task, _count(item))
            speed = bar.tasks[0].speed
            if speed:
                bar.update(task, rate=f"{speed:.1f} {unit}/s")


def _count(item: object) -> int:
    return len(item) if hasattr(item, "__len__") else 1  # type: ignore[arg-type]


def _plain_progress(items: Iterable[T], total: int | None, description: str, unit: str) -> Iterator[T]:
    """Rate = units done / seconds since the start (what a log reader wants: the average so far)."""
    t0 = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += _count(item)
        now = time.monotonic()
        if now - last >= PROGRESS_LOG_INTERVAL_S:
            last = now
            _log_line(progress_line(description, done, total, done / max(now - t0, 1e-9), unit))
    # the end (an error or Ctrl-C has its own line instead, so an error stays one line)
    _log_line(progress_line(description, done, total, done / max(time.monotonic() - t0, 1e-9), unit))


def _log_line(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True, markup=False)


@contextlib.contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: Python warnings other than :class:`DifflensWarning` are ignored (torch's
    FutureWarnings, numpy's RuntimeWarnings...), and transformers/diffusers/huggingface_hub/datasets log only
    errors and show no progress bars. Explicit user settings win: ``-W``/``PYTHONWARNINGS`` keep the warning
    filters, a ``*_VERBOSITY`` or ``*_DISABLE_PROGRESS_BARS`` variable in the environment is kept. Everything
    is restored on exit. Imports none of those libraries: one imported later reads the variables set here."""
    if verbose:
        yield
        return
    import warnings

    saved_env = {k: os.environ.get(k) for k in (*_LIBRARY_LOGGERS.values(), *_BARS_ENV)}
    user_set = {k for k, v in saved_env.items() if v is not None}
    saved_levels = {name: logging.getLogger(name).level for name in _LIBRARY_LOGGERS}
    bars = _loaded_bar_switches()
    bars_before = {name: on() for name, (on, _, _) in bars.items()}
    for name, var in _LIBRARY_LOGGERS.items():
        if var not in user_set:
            os.environ[var] = "error"
            logging.getLogger(name).setLevel(logging.ERROR)
    for var in _BARS_ENV:
        os.environ.setdefault(var, "1")
    for _, off, _ in bars.values():
        with contextlib.suppress(Exception):  # a library refusing (its own env variable set) keeps its bars
            off()
    with warnings.catch_warnings():
        if not sys.warnoptions:
            warnings.simplefilter("ignore")
            warnings.simplefilter("default", DifflensWarning)
        try:
            yield
        finally:
            for var, value in saved_env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            for name, (_, _, on) in bars.items():
                if bars_before[name]:
                    with contextlib.suppress(Exception):
                        on()


def _loaded_bar_switches() -> dict[str, tuple]:
    """(is_enabled, disable, enable) of the progress bars of libraries already imported (none in a fresh
    CLI process; several in a test process)."""
    switches: dict[str, tuple] = {}
    for name in ("transformers", "diffusers"):
        mod = sys.modules.get(f"{name}.utils.logging")
        if mod is not None:
            switches[name] = (mod.is_progress_bar_enabled, mod.disable_progress_bar, mod.enable_progress_bar)
    hub = sys.modules.get("huggingface_hub.utils.tqdm")
    if hub is not None:
        switches["huggingface_hub"] = (lambda: not hub.are_progress_bars_disabled(),
                                       hub.disable_progress_bars, hub.enable_progress_bars)
    return switches
