"""Settings shared by every mode, and the rule that makes each mode's config the single source of defaults.

Each mode has frozen, typed configs (enumerations as ``Literal``): :mod:`difflens.metrics.config`,
:mod:`difflens.schedule.config`, :mod:`difflens.attention.config`, :mod:`difflens.latent.config` and
:class:`difflens.generate.options.GenerateOptions`. The CLI options, the Python functions' defaults and
the tables of ``analysis.toml`` (:mod:`difflens.analyze.modes`) read their defaults from them;
``tests/test_config_defaults.py`` checks that every CLI option default equals its config default. This module
imports only the standard library.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, get_args

__all__ = ["DTYPES", "RUNTIME", "Dtype", "RuntimeConfig", "defaults"]

#: Model weights dtype of every mode that loads a pipeline or an encoder.
Dtype = Literal["float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a model runs, the same in every mode."""

    dtype: Dtype = "float32"
    device: str | None = None  # None: cuda when available, else cpu
    offline: bool = False  # never download (also HF_HUB_OFFLINE=1 / DIFFLENS_OFFLINE=1)
    seed: int = 0  # every seed of difflens but the metrics' sampling seed (2020, torch-fidelity's)
    strict: bool = False  # unreadable or oversized images are an error instead of skipped with a warning


#: The defaults, as an instance (``RUNTIME.dtype``).
RUNTIME = RuntimeConfig()


def defaults(config: Any, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``{field: default}`` of a config class or instance (an instance's values), for the fields in ``names``
    (default: every field that has a default)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if names is not None and f.name not in names:
            continue
        if isinstance(config, type):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        else:
            out[f.name] = getattr(config, f.name)
    if names is not None and set(names) - set(out):
        raise KeyError(f"{type(config).__name__}: no default for {sorted(set(names) - set(out))}")
    return out
