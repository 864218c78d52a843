"""Terminal output: one rich console on stderr and a progress helper for long work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console

T = TypeVar("T")

console = Console(stderr=True)


def progress(items: Iterable[T], total: int | None, description: str, unit: str = "img") -> Iterator[T]:
    """Iterate with a progress bar showing rate and time left; ``total`` counts units, advance by len(item)
    when the item has a length (batches), else by one."""
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
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total, rate="")
        for item in items:
            yield item
            n = len(item) if hasattr(item, "__len__") else 1  # type: ignore[arg-type]
            bar.advance(task, n)
            speed = bar.tasks[0].speed
            if speed:
                bar.update(task, rate=f"{speed:.1f} {unit}/s")
