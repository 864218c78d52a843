"""The resolved configuration of one `difflens analyze` run (frozen; recorded in run.json).

Each mode's own options can come from a TOML file (`--config analysis.toml`), one table per mode:

    [metrics]
    metrics = "fid,kid,pr,dc"
    bootstrap = 20
    [schedule]
    steps = 30
    [attention]
    steps = 10
    [latent]
    frames = 5

Options given on the command line win over the file.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

ALL_MODES = ("metrics", "schedule", "attention", "latent")


@dataclass(frozen=True)
class AnalysisConfig:
    model: str
    out: Path
    modes: tuple[str, ...] = ALL_MODES
    real: str | None = None
    prompts: str | None = None
    num_samples: int = 32
    prompt: str = "a photo of a cat sitting on a bench"
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    offline: bool = False
    label: str | None = None
    mode_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options(self, mode: str) -> dict[str, Any]:
        return dict(self.mode_options.get(mode, {}))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown or not modes:
        raise DifflensError(f"unknown mode(s) {', '.join(unknown) or '(none given)'}.",
                            f"choose from {', '.join(ALL_MODES)}")
    return modes


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML config; top-level keys are run options, tables are per-mode options."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    p = Path(path)
    if not p.is_file():
        raise DifflensError(f"config file {p} does not exist.", "pass the path of a TOML file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DifflensError(f"config file {p} is not valid TOML: {exc}", "fix the syntax") from None
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in ALL_MODES]
    if unknown:
        raise DifflensError(f"config file {p} has unknown table(s) {', '.join(unknown)}.",
                            f"use tables named {', '.join(ALL_MODES)}")
    return data
