"""The shapes world: a deterministic, seeded renderer of captioned 64x64 scenes with ground-truth masks.

Each scene is a light background (RGB 235 plus Gaussian noise of std 2) holding one or two objects that
do not overlap (their bounding boxes keep a gap of at least ``GAP`` px). An object is a ``circle``,
``square`` or ``triangle`` (axis-aligned; the triangle is isosceles, apex up, base = height = size),
``SIZE_RANGE`` px across, fully inside the image, coloured from the four-colour palette ``COLORS``. The
two objects of a two-object scene have different colours, so every palette colour marks one object.

Captions: ``a {color} {shape}`` and ``a {color} {shape} and a {color} {shape}``. Every colour word and
every shape word comes with its object's mask (``Scene.word_masks``; word index into ``caption.split()``).

Edges are anti-aliased by 4x4 supersampling: a pixel's colour is the covered fraction ``c`` of the object
colour, ``(1 - c) * background + c * colour``; its mask bit is ``c >= 0.5``.

Only numpy is needed here; the same seed gives the same scene on every platform (``numpy.random.Generator``
with PCG64 is platform-independent, and all geometry is float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

IMAGE_SIZE = 64
BACKGROUND = 235
NOISE_STD = 2.0
SIZE_RANGE = (14, 28)
GAP = 2
SUPERSAMPLE = 4

#: The palette (fixed; documented in the README).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Every word a caption can hold.
VOCABULARY: tuple[str, ...] = ("a", "and", *COLORS, *SHAPES)

#: Seeds of the two splits: train seeds are [0, HELDOUT_OFFSET), held-out seeds start at HELDOUT_OFFSET.
HELDOUT_OFFSET = 1_000_000_000

Split = Literal["train", "heldout"]


@dataclass(frozen=True, eq=False)
class ShapeObject:
    """One object: palette colour name, shape name, bool mask (64, 64), centre (x, y) in pixels, size."""

    color: str
    shape: str
    mask: np.ndarray
    center: tuple[float, float]
    size: int = 0


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene: uint8 RGB image (64, 64, 3), its caption, its objects and per-word masks."""

    image: np.ndarray
    caption: str
    objects: tuple[ShapeObject, ...]
    word_masks: list[tuple[int, str, np.ndarray]] = field(default_factory=list)
    seed: int = 0


def _coverage(shape: str, cx: float, cy: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, from SUPERSAMPLE x SUPERSAMPLE sample points."""
    s = SUPERSAMPLE
    coords = (np.arange(IMAGE_SIZE * s, dtype=np.float64) + 0.5) / s
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    half = size / 2.0
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    elif shape == "triangle":
        top, bottom = cy - half, cy + half
        frac = np.clip((ys - top) / size, 0.0, 1.0)  # 0 at the apex, 1 at the base
        inside = (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= half * frac)
    else:  # pragma: no cover - guarded by the callers
        raise ValueError(shape)
    return inside.reshape(IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(1, 3))


def _place(rng: np.random.Generator, n: int) -> list[tuple[float, float, int]]:
    """Centres and sizes of ``n`` objects fully inside the image whose boxes keep a gap of GAP px."""
    while True:
        boxes: list[tuple[float, float, int]] = []
        for _ in range(n):
            for _try in range(200):
                size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
                lo, hi = size / 2.0 + 1.0, IMAGE_SIZE - size / 2.0 - 1.0
                cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
                if all(
                    abs(cx - bx) >= (size + bs) / 2.0 + GAP or abs(cy - by) >= (size + bs) / 2.0 + GAP
                    for bx, by, bs in boxes
                ):
                    boxes.append((cx, cy, size))
                    break
        if len(boxes) == n:
            return boxes


def render_scene(seed: int, n_objects: int | None = None) -> Scene:
    """Render the scene of ``seed`` (deterministic). ``n_objects`` is 1 or 2; ``None`` draws it (50/50)."""
    if n_objects not in (None, 1, 2):
        from difflens.errors import DifflensError

        raise DifflensError(f"n_objects must be 1 or 2, got {n_objects!r}.", "pass 1, 2 or None")
    rng = np.random.default_rng([int(seed), 0x5A1E5])
    n = int(rng.integers(1, 3)) if n_objects is None else int(n_objects)
    color_names = list(COLORS)
    colors = [color_names[i] for i in rng.permutation(len(color_names))[:n]]
    shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
    placed = _place(rng, n)

    canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), float(BACKGROUND))
    objects: list[ShapeObject] = []
    for color, shape, (cx, cy, size) in zip(colors, shapes, placed, strict=True):
        cov = _coverage(shape, cx, cy, size)
        rgb = np.asarray(COLORS[color], dtype=np.float64)
        canvas = canvas * (1.0 - cov[..., None]) + rgb * cov[..., None]
        objects.append(ShapeObject(color, shape, cov >= 0.5, (cx, cy), size))
    canvas += rng.normal(0.0, NOISE_STD, canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    phrases = [f"a {o.color} {o.shape}" for o in objects]
    caption = " and ".join(phrases)
    word_masks: list[tuple[int, str, np.ndarray]] = []
    for k, o in enumerate(objects):
        base = 4 * k  # "a c s and a c s": object k's colour word sits at 4k + 1
        word_masks.append((base + 1, o.color, o.mask))
        word_masks.append((base + 2, o.shape, o.mask))
    return Scene(image=image, caption=caption, objects=tuple(objects), word_masks=word_masks, seed=int(seed))


def split_seeds(split: Split, n: int, start: int = 0) -> list[int]:
    """``n`` seeds of a split: train seeds ``start..start+n-1``; held-out seeds offset by HELDOUT_OFFSET.
    The ranges are disjoint as long as ``start + n <= HELDOUT_OFFSET``."""
    from difflens.errors import DifflensError

    if split not in ("train", "heldout"):
        raise DifflensError(f"unknown split {split!r}.", "use 'train' or 'heldout'")
    if n < 0 or start < 0 or start + n > HELDOUT_OFFSET:
        raise DifflensError(f"seed range {start}..{start + n} is out of bounds.",
                            f"keep 0 <= start and start + n <= {HELDOUT_OFFSET}")
    offset = 0 if split == "train" else HELDOUT_OFFSET
    return [offset + start + i for i in range(n)]


def render_images(seeds: list[int], n_objects: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Images (N, 64, 64, 3) uint8 and captions of the scenes of ``seeds``."""
    scenes = [render_scene(s, n_objects) for s in seeds]
    return np.stack([s.image for s in scenes]), [s.caption for s in scenes]


def segment_palette(image: np.ndarray, max_distance: float = 60.0) -> np.ndarray:
    """Label each pixel with the index (into ``COLORS``) of the nearest palette colour, or -1 when the
    nearest is the background or farther than ``max_distance`` (Euclidean RGB distance)."""
    img = np.asarray(image, dtype=np.float64)[..., :3]
    refs = np.asarray([[BACKGROUND] * 3, *COLORS.values()], dtype=np.float64)
    dist = np.linalg.norm(img[..., None, :] - refs, axis=-1)
    idx = dist.argmin(axis=-1)
    labels = idx - 1
    labels[dist.min(axis=-1) > max_distance] = -1
    return labels


def color_areas(image: np.ndarray, max_distance: float = 60.0) -> dict[str, int]:
    """Pixel count of each palette colour in ``image`` (see :func:`segment_palette`)."""
    labels = segment_palette(image, max_distance)
    return {name: int((labels == i).sum()) for i, name in enumerate(COLORS)}


def dominant_color(image: np.ndarray, min_pixels: int = 20, max_distance: float = 60.0) -> str | None:
    """The palette colour covering the most pixels, or ``None`` when none covers ``min_pixels``."""
    areas = color_areas(image, max_distance)
    name = max(areas, key=lambda k: areas[k])
    return name if areas[name] >= min_pixels else None
