"""difflens metrics mode: exact Inception metrics (FID, KID, IS, precision/recall, density/coverage) and
CLIP/DINOv2-based metrics.

Importing this package is light; the public functions are loaded on first use:
``compute_metrics``, ``compute_inception_features`` (from :mod:`difflens.metrics.api`), ``Evaluator``
(the training-loop API, :mod:`difflens.metrics.evaluator`) and
``make_random_inception_weights`` (from :mod:`difflens.metrics.inception`).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Evaluator": "difflens.metrics.evaluator",
    "compute_metrics": "difflens.metrics.api",
    "compute_inception_features": "difflens.metrics.api",
    "make_random_inception_weights": "difflens.metrics.inception",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'difflens.metrics' has no attribute {name!r}")
