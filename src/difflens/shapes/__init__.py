"""The shapes world: captioned 64x64 scenes with ground-truth masks, and small models trained on them.

* :mod:`~difflens.shapes.world` — the seeded renderer (``render_scene``, ``Scene``, ``ShapeObject``,
  ``COLORS``, ``SHAPES``, ``IMAGE_SIZE``, ``split_seeds``, palette segmentation); numpy only
* :mod:`~difflens.shapes.models` — the shipped models: ``FAMILIES``, ``pretrained(family)``,
  ``pretrained_clip()``, ``check_files()``; no torch at import
* :mod:`~difflens.shapes.train` — ``python -m difflens.shapes.train`` reproduces the shipped models

Names are resolved lazily, so ``import difflens.shapes`` imports nothing but this file.
"""

from __future__ import annotations

import importlib
from typing import Any

_WORLD = (
    "COLORS", "SHAPES", "IMAGE_SIZE", "VOCABULARY", "Scene", "ShapeObject", "render_scene", "render_images",
    "split_seeds", "segment_palette", "color_areas", "dominant_color",
)
_MODELS = ("FAMILIES", "pretrained", "pretrained_clip", "check_files", "PRETRAINED_DIR")

__all__ = [*_WORLD, *_MODELS]


def __getattr__(name: str) -> Any:
    if name in _WORLD:
        return getattr(importlib.import_module("difflens.shapes.world"), name)
    if name in _MODELS:
        return getattr(importlib.import_module("difflens.shapes.models"), name)
    raise AttributeError(f"module 'difflens.shapes' has no attribute {name!r}")
