"""Attention on the trained shapes models, checked against the shapes world's ground truth.

Real held-out images (the given-image route, maps scored against the renderer's masks), two-object captions
(each word's peak in its own object), generated images (the shape word's map on the region of the prompt's
colour, segmented by the palette) and per-step entropy curves, on both shipped families. The thresholds sit
below the values these settings measure (``benchmarks/measure_attention_shapes.py`` gives the same figures on
the same 100 held-out scenes; the values and the settings are in BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from difflens.attention.shapes_eval import (
    Setting,
    generated_scores,
    real_image_scores,
    summarize_generated,
    summarize_real,
)
from difflens.shapes import split_seeds

FAMILIES = ("unet", "mmdit")
#: Maps scored per family: noise levels (averaged) and layers (None: every cross/joint-attention layer).
SETTINGS = {"unet": Setting(levels=(0.1,)), "mmdit": Setting(levels=(0.1,))}
N_REAL = 100           # held-out scenes (the count; about half of them hold two objects)
GEN_SEEDS = (0,)       # one seed per `a {color} {shape}` prompt here (12 images)
GEN_STEPS = 10
#: Thresholds: the values these exact settings give (deterministic on CPU; measured on the shipped files of
#: 2026-12-01, see BENCHMARKS.md "Shapes-world models") minus a margin for pixels or pairs flipping on another
#: platform. The issue's target for the shape-word mIoU at the DAAM threshold is 0.5.
SHAPE_MIOU = {"unet": 0.72, "mmdit": 0.70}
SHAPE_AUROC = {"unet": 0.97, "mmdit": 0.96}
COLOR_MIOU = {"unet": 0.70, "mmdit": 0.72}
COLOR_POINTING = {"unet": 0.95, "mmdit": 0.95}
TWO_OBJECT_OWN = {"shape": 0.85, "color": 0.93}
GEN_POINTING = {"unet": 0.9, "mmdit": 0.9}
GEN_MIOU = {"unet": 0.65, "mmdit": 0.55}
#: Spatial entropy of the shape word over the steps, as measured (first -> last step of the mean curve;
#: 24 images, 20 steps): both families' maps sharpen, the UNet's clearly (0.91 -> 0.69, in 100% of runs),
#: the MMDiT's slightly (0.993 -> 0.974, in 92%).
SHARPENS = {"unet": True, "mmdit": True}


@pytest.fixture(scope="module")
def pipes() -> Any:
    from difflens.models import load_pipeline
    from difflens.shapes import pretrained

    cache: dict[str, tuple[Any, str]] = {}

    def get(family: str) -> tuple[Any, str]:
        if family not in cache:
            path = pretrained(family)
            cache[family] = (load_pipeline(path, "float32", "cpu", offline=True), path)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def real_rows(pipes: Any) -> Any:
    """family -> one row per (held-out scene, colour or shape word), computed once per family."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def get(family: str) -> list[dict[str, Any]]:
        if family not in cache:
            pipe, model = pipes(family)
            cache[family] = real_image_scores(pipe, model, split_seeds("heldout", N_REAL), SETTINGS[family])
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_real_images_words_cover_their_objects(family: str, real_rows: Any) -> None:
    s = summarize_real(real_rows(family))
    print(family, s)
    assert s["n_scenes"] == N_REAL and not s["failed_checks"]
    assert s["shape"]["miou"] >= max(0.5, SHAPE_MIOU[family]), s
    assert s["shape"]["auroc"] >= SHAPE_AUROC[family], s
    assert s["color"]["miou"] >= COLOR_MIOU[family], s
    assert s["color"]["pointing"] >= COLOR_POINTING[family], s


@pytest.mark.parametrize("family", FAMILIES)
def test_two_object_captions_peak_in_own_object(family: str, real_rows: Any) -> None:
    s = summarize_real(real_rows(family))
    for kind in ("shape", "color"):
        assert s[kind]["two_object_n"] >= 60, s        # 30+ two-object scenes among the 100
        assert s[kind]["two_object_peak_in_own"] >= TWO_OBJECT_OWN[kind], s
        assert s[kind]["two_object_peak_in_own"] > s[kind]["two_object_peak_in_other"], s


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_images_shape_word_on_prompt_colour(family: str, pipes: Any) -> None:
    pipe, model = pipes(family)
    s = summarize_generated(generated_scores(pipe, model, GEN_SEEDS, steps=GEN_STEPS))
    assert not s["failed_checks"]
    assert s["n_with_region"] >= 0.8 * s["n"], s
    assert s["pointing"] >= GEN_POINTING[family], s
    assert s["miou"] >= GEN_MIOU[family], s
    print(family, "generated", s["miou"], s["pointing"], s["entropy_shape_per_step"])
    curve = s["entropy_shape_per_step"]
    assert len(curve) >= GEN_STEPS and all(0.0 < e <= 1.0 for e in curve)
    assert (curve[-1] < curve[0]) == SHARPENS[family], curve
