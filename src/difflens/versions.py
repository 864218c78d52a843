"""Library versions recorded in every result file."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = ("difflens", "numpy", "scipy", "torch", "torchvision", "diffusers", "transformers",
             "torch-fidelity")


def collect_versions() -> dict[str, str | None]:
    """Versions of python and the packages that change numbers (without importing them)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
