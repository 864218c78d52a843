"""Check the numeric fields of a scheduler config before diffusers sees it.

diffusers builds a scheduler from almost any config and fails later, deep inside array code (for
``num_train_timesteps: -5``, a negative-size ``linspace``), or quietly produces a meaningless schedule.
These checks cover the fields every family reads; each problem is one :class:`DifflensError` naming the
field, its value and the source. Unknown fields and ``null`` values are left to diffusers.
"""

from __future__ import annotations

import math
from typing import Any

from difflens.errors import DifflensError
from difflens.schedule.sources import SPACINGS

#: field -> (lowest allowed, highest allowed, whether the bounds are inclusive, integer only)
_RANGES: dict[str, tuple[float, float, tuple[bool, bool], bool]] = {
    "num_train_timesteps": (1, math.inf, (True, False), True),
    "steps_offset": (0, math.inf, (True, False), True),
    "beta_start": (0.0, 1.0, (True, False), False),
    "beta_end": (0.0, 1.0, (False, False), False),
    "shift": (0.0, math.inf, (False, False), False),
    "sigma_min": (0.0, math.inf, (False, False), False),
    "sigma_max": (0.0, math.inf, (False, False), False),
    "rho": (0.0, math.inf, (False, False), False),
    "base_image_seq_len": (1, math.inf, (True, False), True),
    "max_image_seq_len": (1, math.inf, (True, False), True),
    "base_shift": (-math.inf, math.inf, (False, False), False),
    "max_shift": (-math.inf, math.inf, (False, False), False),
}


def _describe(lo: float, hi: float, inclusive: tuple[bool, bool], integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    parts = []
    if lo > -math.inf:
        parts.append(f"{'>=' if inclusive[0] else '>'} {lo:g}")
    if hi < math.inf:
        parts.append(f"{'<=' if inclusive[1] else '<'} {hi:g}")
    return f"{kind} {' and '.join(parts)}" if parts else f"a finite {'integer' if integer else 'number'}"


def _in_range(value: Any, lo: float, hi: float, inclusive: tuple[bool, bool], integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if integer and not isinstance(value, int):
        return False
    if not math.isfinite(value):
        return False
    above = value >= lo if inclusive[0] else value > lo
    below = value <= hi if inclusive[1] else value < hi
    return above and below


def check_scheduler_config(config: dict[str, Any], where: str) -> None:
    """Raise a DifflensError for the first invalid field of ``config`` (read from ``where``)."""
    hint = "correct that field of the scheduler config, or pass another schedule"
    for key, (lo, hi, inclusive, integer) in _RANGES.items():
        value = config.get(key)
        if value is None:
            continue
        if not _in_range(value, lo, hi, inclusive, integer):
            raise DifflensError(f"scheduler config {where}: {key} must be "
                                f"{_describe(lo, hi, inclusive, integer)}, got {value!r}.", hint)
    _check_pairs(config, where, hint)
    spacing = config.get("timestep_spacing")
    if spacing is not None and spacing not in SPACINGS:
        raise DifflensError(f"scheduler config {where}: timestep_spacing must be one of "
                            f"{', '.join(SPACINGS)}, got {spacing!r}.", hint)
    betas = config.get("trained_betas")
    if betas is not None:
        _check_betas(betas, config.get("num_train_timesteps"), where, hint)


def _check_pairs(config: dict[str, Any], where: str, hint: str) -> None:
    for low, high in (("beta_start", "beta_end"), ("sigma_min", "sigma_max"),
                      ("base_image_seq_len", "max_image_seq_len")):
        a, b = config.get(low), config.get(high)
        if a is not None and b is not None and a > b:
            raise DifflensError(f"scheduler config {where}: {low} ({a!r}) is larger than {high} ({b!r}).",
                                hint)


def _check_betas(betas: Any, num_train_timesteps: Any, where: str, hint: str) -> None:
    ok = isinstance(betas, (list, tuple)) and len(betas) > 0 and all(
        _in_range(b, 0.0, 1.0, (True, False), False) for b in betas)
    if not ok:
        raise DifflensError(f"scheduler config {where}: trained_betas must be a non-empty list of numbers in "
                            "[0, 1).", hint)
    if isinstance(num_train_timesteps, int) and len(betas) != num_train_timesteps:
        raise DifflensError(f"scheduler config {where}: trained_betas has {len(betas)} values but "
                            f"num_train_timesteps is {num_train_timesteps}.", hint)
