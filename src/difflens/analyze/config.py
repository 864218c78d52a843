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

import difflib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.config import RUNTIME
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
    seed: int = RUNTIME.seed
    device: str | None = RUNTIME.device
    dtype: str = RUNTIME.dtype
    offline: bool = RUNTIME.offline
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


#: Top-level keys of analysis.toml and their types (command-line options win over them).
TOP_LEVEL_KEYS: dict[str, tuple[type, ...]] = {
    "real": (str,), "prompts": (str,), "num_samples": (int,), "prompt": (str,), "seed": (int,),
    "device": (str,), "dtype": (str,), "label": (str,), "offline": (bool,), "modes": (str, list),
}
#: Types of the per-mode options whose default is None (the others take their default's type).
_NONE_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "steps": (int,), "height": (int,), "width": (int,), "size": (int,), "max_sequence_length": (int,),
    "guidance": (int, float), "stride": (int,), "frames": (int,),
}


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    if types == (int, float):
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_type(value: Any, types: tuple[type, ...], what: str, where: str) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise DifflensError(f"{what} {where} must be {_type_name(types)}, got {value!r}.",
                            f"set it to {_type_name(types)}")


def _unknown(key: str, valid: list[str], what: str, where: str) -> DifflensError:
    close = difflib.get_close_matches(key, valid, n=1)
    did = f" (did you mean {close[0]!r}?)" if close else ""
    return DifflensError(f"unknown key {key!r}{did} in {what} of {where}.",
                         f"valid keys: {', '.join(valid)}")


def check_mode_options(mode: str, options: dict[str, Any], where: str = "the config") -> None:
    """The keys of one mode's table are known and their values have the default's type."""
    from difflens.analyze.modes import MODE_DEFAULTS

    if mode not in MODE_DEFAULTS:
        close = difflib.get_close_matches(mode, list(MODE_DEFAULTS), n=1)
        did = f" (did you mean [{close[0]}]?)" if close else ""
        raise DifflensError(f"unknown table [{mode}]{did} in {where}.",
                            f"use tables named {', '.join(ALL_MODES)}")
    defaults = MODE_DEFAULTS[mode]
    for key, value in options.items():
        if key not in defaults:
            raise _unknown(key, sorted(defaults), f"the [{mode}] table", where)
        default = defaults[key]
        types = _NONE_DEFAULT_TYPES.get(key) if default is None else (
            (int, float) if isinstance(default, float) else (type(default),))
        if types is not None:
            _check_type(value, types, f"{key} in the [{mode}] table of", where)


def check_config(data: dict[str, Any], where: str) -> None:
    """Every table is a mode, every key is known, every value has the right type; raised before any mode
    runs or anything is written."""
    for key, value in data.items():
        if isinstance(value, dict):
            check_mode_options(key, value, where)
        elif key == "model":
            raise DifflensError(f"the model is not read from {where} (key 'model').",
                                "remove it and pass --model on the command line")
        elif key not in TOP_LEVEL_KEYS:
            raise _unknown(key, sorted(TOP_LEVEL_KEYS), "the top level", where)
        else:
            _check_type(value, TOP_LEVEL_KEYS[key], key, f"in {where}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse and check a TOML config; top-level keys are run options, tables are per-mode options."""
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
        raise DifflensError(f"config file {p} is not valid TOML: {exc}.", "fix the syntax") from None
    check_config(data, str(p))
    return data


def check_run(cfg: AnalysisConfig) -> None:
    """What the chosen modes need, known before any of them runs."""
    if "metrics" in cfg.modes and not cfg.real:
        raise DifflensError("the metrics mode needs reference images.",
                            "pass --real FOLDER, or leave metrics out of --modes")
    if "metrics" in cfg.modes and not cfg.prompts:
        raise DifflensError("the metrics mode of analyze needs prompts to generate samples.",
                            "pass --prompts FILE (one prompt a line), or leave metrics out of --modes")
    if cfg.num_samples < 2:
        raise DifflensError(f"num_samples must be at least 2, got {cfg.num_samples}.",
                            "pass --num-samples N with N >= 2")
