"""Ctrl-C: one line on stderr naming what stopped and how to resume, exit code 130 (128 + SIGINT).

Code that knows how to resume (resumable generation) raises :class:`Interrupted` with its own line; for
everything else the CLI says whether any file was written (every result goes through
:mod:`difflens.atomic`, so what was written is complete and nothing partial is left).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

#: 128 + SIGINT, what shells report for a process stopped by Ctrl-C.
EXIT_INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that says what stopped and how to resume (one line, without "interrupted:")."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs (e.g. image file + manifest line: both or neither), then raise
    KeyboardInterrupt at its end if one came. Only the main thread handles signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # signals unavailable in this interpreter state
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        if callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt
