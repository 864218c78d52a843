"""What a ``difflens generate`` call is asked (:class:`GenerateOptions`: the generate mode's frozen config,
the single source of the defaults of ``difflens generate`` and :func:`difflens.generate.api.generate`) and
what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.config import RUNTIME
from difflens.errors import DifflensError
from difflens.generate.manifest import RunSettings


@dataclass(frozen=True)
class GenerateOptions:
    """Settings of one ``difflens generate`` call. ``None`` means the pipeline's own default."""

    num_samples: int
    steps: int | None = None
    guidance: float | None = None
    seed: int = RUNTIME.seed
    batch_size: int | None = None  # None: chosen automatically
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    max_batch_size: int = 64

    def validate(self) -> None:
        """Raise DifflensError for values that can never work (before anything is loaded or written)."""
        if self.num_samples < 1:
            raise DifflensError(f"--num-samples must be at least 1 (got {self.num_samples}).",
                                "pass --num-samples N with N >= 1")
        if self.steps is not None and self.steps < 1:
            raise DifflensError(f"--steps must be at least 1 (got {self.steps}).", "pass --steps 20, say")
        if self.batch_size is not None and self.batch_size < 1:
            raise DifflensError(f"--batch-size must be at least 1 (got {self.batch_size}).",
                                "leave --batch-size out to let difflens choose")
        for name, value in (("--height", self.height), ("--width", self.width)):
            if value is not None and value < 1:
                raise DifflensError(f"{name} must be positive (got {value}).", f"pass {name} 512, say")
        if self.guidance is not None and not (self.guidance == self.guidance):  # NaN
            raise DifflensError("--guidance is NaN.", "pass a number, e.g. --guidance 7.5")


@dataclass
class TruncationReport:
    """Prompts longer than a text encoder's limit: the pipeline truncates them silently."""

    prompts: int = 0  # distinct prompts truncated by at least one tokenizer
    samples: int = 0  # samples of this run whose prompt is truncated
    limits: dict[str, int] = field(default_factory=dict)  # tokenizer attribute -> token limit
    by_tokenizer: dict[str, int] = field(default_factory=dict)  # tokenizer attribute -> prompts truncated
    examples: list[str] = field(default_factory=list)


@dataclass
class GenerationReport:
    """What a generation call did; also written to ``summary.json`` in the folder."""

    out_dir: Path
    num_samples: int
    finished: int
    generated: int
    resumed: int
    flagged: dict[str, list[int]]
    truncation: TruncationReport
    batch_size: int
    seconds: float
    images_per_s: float
    settings: RunSettings

    def flagged_count(self) -> int:
        return len({i for idx in self.flagged.values() for i in idx})

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "num_samples": self.num_samples,
            "finished": self.finished,
            "generated_this_run": self.generated,
            "skipped_finished": self.resumed,
            "flagged": {k: {"count": len(v), "indices": v} for k, v in self.flagged.items()},
            "valid": self.finished - self.flagged_count(),
            "truncated_prompts": {
                "prompts": self.truncation.prompts,
                "samples": self.truncation.samples,
                "limits": self.truncation.limits,
                "by_tokenizer": self.truncation.by_tokenizer,
                "examples": self.truncation.examples,
            },
            "batch_size": self.batch_size,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "settings": self.settings.to_dict(),
        }
