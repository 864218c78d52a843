"""The schedule mode's settings: frozen, typed, the single source of the defaults of ``difflens schedule``,
:func:`difflens.schedule.api.analyze_schedules` and the ``[schedule]`` table of ``analysis.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ScheduleConfig", "Spacing"]

#: diffusers' ``timestep_spacing`` values (Lin et al. 2024, table 2).
Spacing = Literal["leading", "trailing", "linspace"]


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = 50  # inference steps to trace
    spacing: Spacing | None = None  # None: each scheduler config's own timestep_spacing
    height: int | None = None  # for dynamic shifting (Flux); None: 1024
    width: int | None = None
    scheduler: str | None = None  # swap the sampler class while keeping each model's config
