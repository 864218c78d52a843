"""One exception type for bad input: the CLI prints it as one line, without a traceback."""

from __future__ import annotations


class DifflensError(Exception):
    """A problem the user can fix. ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} Fix: {hint}")
