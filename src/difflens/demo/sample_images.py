"""Small real image sets from images that ship inside scikit-image and scikit-learn (no download).

`natural_crops` cuts deterministic square crops out of the bundled colour photographs (astronaut,
chelsea the cat, coffee, rocket, the Hubble deep field, an IHC slide, a retina, and scikit-learn's
china and flower photos), resized to `size`. Two disjoint crop sets of the same photographs make a
"same distribution" pair; crops of the bundled grayscale photographs make a "different distribution" set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GRAY = ("camera", "moon", "coins", "grass", "gravel", "brick", "page", "text")


def _colour_photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [getattr(skimage.data, name)() for name in COLOUR]
    photos += list(load_sample_images().images)
    return [p[..., :3].astype(np.uint8) for p in photos]


def _gray_photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in GRAY:
        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1.0))).astype(np.uint8)
        out.append(np.repeat(img[..., None], 3, axis=2))
    return out


def _crops(photos: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """`n` random square crops (side 1/3 to 2/3 of the shorter side), resized to `size` (PIL bicubic)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, 2 * min(h, w) // 3 + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side])
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))
    return out


def natural_crops(n: int = 64, size: int = 64, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 crops of the bundled colour photographs."""
    return _crops(_colour_photos(), n, size, seed)


def grayscale_crops(n: int = 32, size: int = 64, seed: int = 1) -> np.ndarray:
    """(n, size, size, 3) uint8 crops of the bundled grayscale photographs (a different distribution)."""
    return _crops(_gray_photos(), n, size, seed)


def write_folder(images: np.ndarray, folder: str | Path, prefix: str = "img") -> Path:
    """Write images as PNG files (atomically) into `folder`."""
    from PIL import Image

    from difflens.atomic import save_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_image(folder / f"{prefix}_{i:04d}.png", Image.fromarray(img))
    return folder
