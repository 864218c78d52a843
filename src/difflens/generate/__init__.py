"""difflens generate mode: resumable sample generation from diffusers text-to-image pipelines.

Heavy imports (torch, diffusers) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["generate", "read_samples", "regenerate_sample"]


def __getattr__(name: str) -> Any:
    if name in ("generate", "regenerate_sample"):
        from difflens.generate import api

        return getattr(api, name)
    if name == "read_samples":
        from difflens.generate.manifest import read_samples

        return read_samples
    raise AttributeError(name)
