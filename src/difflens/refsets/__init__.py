"""Reference sets by name: Hugging Face datasets, parquet/arrow files, reusable reference statistics.

Heavy imports (datasets, numpy, torch) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "build_reference_stats",
    "coco_style_reference",
    "draw_subset",
    "is_dataset_spec",
    "is_stats_spec",
    "load_prompts_from_dataset",
    "load_registry_stats",
    "open_image_source",
]

_WHERE = {
    "build_reference_stats": "difflens.refsets.build_stats",
    "coco_style_reference": "difflens.refsets.coco",
    "draw_subset": "difflens.refsets.subset",
    "is_dataset_spec": "difflens.refsets.dataset_spec",
    "load_prompts_from_dataset": "difflens.refsets.dataset_source",
    "open_image_source": "difflens.refsets.dataset_source",
    "is_stats_spec": "difflens.refsets.registry",
    "load_registry_stats": "difflens.refsets.registry",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
