"""Result records shared by metrics that compare two feature sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TwoSetResult:
    """A distance between a real and a fake set (CMMD, FD-DINOv2), with an optional bootstrap interval."""

    value: float
    n_real: int
    n_fake: int
    ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "n_real": self.n_real, "n_fake": self.n_fake}
        if self.ci95 is not None:
            out["ci95"] = list(self.ci95)
        return out
