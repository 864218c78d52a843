"""The compare mode's settings: frozen, typed, the single source of its defaults (``difflens compare`` and
:func:`difflens.compare.api.compare` read them). Standard library only."""

from __future__ import annotations

from dataclasses import dataclass

from difflens.config import RUNTIME
from difflens.errors import DifflensError
from difflens.metrics.config import DEFAULT_CLIP_MODEL


@dataclass(frozen=True)
class CompareConfig:
    """Every setting that changes a comparison's numbers (recorded in the JSON's ``settings``)."""

    bootstrap: int = 1000  # resamples of the prompts for the 95% intervals; 0: no intervals, no verdict
    seed: int = 0  # seeds the resampling
    batch_size: int = 32  # images per forward pass of the scoring models (does not change the scores)
    clip_model: str = DEFAULT_CLIP_MODEL  # CLIP model (hub id or folder) for --metrics clip
    strict: bool = RUNTIME.strict  # unreadable images are an error (default: left out with a warning)

    def validate(self) -> None:
        if self.bootstrap < 0:
            raise DifflensError(f"--bootstrap must be >= 0, got {self.bootstrap}.",
                                "use e.g. --bootstrap 1000")
        if self.batch_size < 1:
            raise DifflensError(f"--batch-size must be >= 1, got {self.batch_size}.",
                                "use e.g. --batch-size 32")
