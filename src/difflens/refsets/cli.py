"""CLI for reference sets (placeholder until the mode lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this mode's commands to the main app."""
