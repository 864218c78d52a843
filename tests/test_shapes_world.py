"""The shapes-world renderer: determinism, palette, sizes, placement, captions and their word masks."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.shapes import (
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    dominant_color,
    render_scene,
    segment_palette,
    split_seeds,
)
from difflens.shapes.world import BACKGROUND, GAP, HELDOUT_OFFSET, SIZE_RANGE

SEEDS = split_seeds("train", 150)
CAPTION = re.compile(r"^a (\w+) (\w+)( and a (\w+) (\w+))?$")


@pytest.fixture(scope="module")
def scenes() -> list:
    return [render_scene(s) for s in SEEDS]


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        m = out.copy()
        m[1:] &= out[:-1]
        m[:-1] &= out[1:]
        m[:, 1:] &= out[:, :-1]
        m[:, :-1] &= out[:, 1:]
        out = m
    return out


def test_same_seed_same_scene_other_seed_other_scene() -> None:
    a, b, c = render_scene(7), render_scene(7), render_scene(8)
    assert a.image.dtype == np.uint8 and a.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.objects, b.objects, strict=True))
    assert not np.array_equal(a.image, c.image)


def test_captions_follow_the_grammar_and_word_masks_point_at_their_words(scenes: list) -> None:
    for sc in scenes:
        m = CAPTION.match(sc.caption)
        assert m, sc.caption
        words = sc.caption.split()
        assert len(sc.objects) == (2 if m.group(3) else 1)
        assert len(sc.word_masks) == 2 * len(sc.objects)
        for k, obj in enumerate(sc.objects):
            assert obj.color in COLORS and obj.shape in SHAPES
            (ic, wc, mc), (is_, ws, ms) = sc.word_masks[2 * k], sc.word_masks[2 * k + 1]
            assert (words[ic], words[is_]) == (wc, ws) == (obj.color, obj.shape)
            assert np.array_equal(mc, obj.mask) and np.array_equal(ms, obj.mask)
        if len(sc.objects) == 2:
            assert sc.objects[0].color != sc.objects[1].color


def test_objects_have_palette_colours_on_a_light_noisy_background(scenes: list) -> None:
    for sc in scenes:
        img = sc.image.astype(np.float64)
        union = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
        for obj in sc.objects:
            inner = _erode(obj.mask, 2)
            assert inner.sum() > 20
            # interior pixels: palette colour plus N(0, 2) noise; the mean of >20 pixels is within 2 levels
            assert np.abs(img[inner].mean(0) - COLORS[obj.color]).max() < 2.0
            union |= obj.mask
        far = ~np.logical_or.reduce([~_erode(~union, 2)])
        bg = img[far]
        assert abs(bg.mean() - BACKGROUND) < 1.0 and 1.0 < bg.std() < 3.0


def test_sizes_placement_and_no_overlap(scenes: list) -> None:
    n_seen = {1: 0, 2: 0}
    for sc in scenes:
        n_seen[len(sc.objects)] += 1
        for obj in sc.objects:
            ys, xs = np.nonzero(obj.mask)
            # the mask's extent is the size, up to one pixel of rasterization either side
            assert SIZE_RANGE[0] - 2 <= xs.max() - xs.min() + 1 <= SIZE_RANGE[1] + 1
            assert SIZE_RANGE[0] - 2 <= ys.max() - ys.min() + 1 <= SIZE_RANGE[1] + 1
            assert xs.min() > 0 and ys.min() > 0 and xs.max() < IMAGE_SIZE - 1 and ys.max() < IMAGE_SIZE - 1
        if len(sc.objects) == 2:
            a, b = sc.objects
            assert not (a.mask & b.mask).any()
            gap_x = abs(a.center[0] - b.center[0]) - (a.size + b.size) / 2
            gap_y = abs(a.center[1] - b.center[1]) - (a.size + b.size) / 2
            assert max(gap_x, gap_y) >= GAP - 1e-9
    assert min(n_seen.values()) > 40  # 150 seeds, 1 or 2 objects drawn 50/50
    assert {o.color for sc in scenes for o in sc.objects} == set(COLORS)
    assert {o.shape for sc in scenes for o in sc.objects} == set(SHAPES)


def test_forced_object_count() -> None:
    assert all(len(render_scene(s, 2).objects) == 2 for s in range(20))
    assert all(len(render_scene(s, 1).objects) == 1 for s in range(20))
    with pytest.raises(DifflensError, match="n_objects"):
        render_scene(0, 3)


def test_palette_segmentation_recovers_the_masks(scenes: list) -> None:
    ious = []
    for sc in scenes:
        labels = segment_palette(sc.image)
        for obj in sc.objects:
            seg = labels == list(COLORS).index(obj.color)
            ious.append((seg & obj.mask).sum() / (seg | obj.mask).sum())
    # measured on these 150 scenes: min 0.75 (anti-aliased edges of a small triangle), mean 0.916
    assert min(ious) > 0.7 and np.mean(ious) > 0.9
    for sc in scenes:
        big, *small = sorted(sc.objects, key=lambda o: -o.mask.sum())
        if not small or big.mask.sum() > 1.3 * small[0].mask.sum():
            assert dominant_color(sc.image) == big.color
        assert dominant_color(sc.image) in {o.color for o in sc.objects}
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, np.uint8)
    assert dominant_color(blank) is None


def test_splits_are_disjoint_and_checked() -> None:
    train, held = split_seeds("train", 1000), split_seeds("heldout", 1000)
    assert len(set(train)) == 1000 and not set(train) & set(held)
    assert max(train) < HELDOUT_OFFSET <= min(held)
    with pytest.raises(DifflensError, match="split"):
        split_seeds("test", 3)  # type: ignore[arg-type]
    with pytest.raises(DifflensError, match="out of bounds"):
        split_seeds("train", HELDOUT_OFFSET + 1)


def test_import_is_light() -> None:
    code = ("import sys, json, difflens.shapes as s; s.render_scene(0); s.FAMILIES; "
            "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
