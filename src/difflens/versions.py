"""Library versions recorded in every result file."""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

_PACKAGES = ("difflens", "numpy", "scipy", "torch", "torchvision", "diffusers", "transformers",
             "torch-fidelity")


@lru_cache(maxsize=1)
def _versions_once() -> tuple[tuple[str, str | None], ...]:
    """Read the installed versions once per process: ``importlib.metadata`` scans every distribution on
    ``sys.path`` per lookup (tens of milliseconds), and installed versions do not change under a running
    interpreter in any way that would be meaningful for its results."""
    out: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name in _PACKAGES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def collect_versions() -> dict[str, str | None]:
    """Versions of python and the packages that change numbers (without importing them); a fresh dict
    each call (callers may extend it), read from the per-process cache."""
    return dict(_versions_once())
