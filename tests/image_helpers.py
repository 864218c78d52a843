"""Test images shared by the test modules."""

from __future__ import annotations

import numpy as np


def structured_images(shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB images of the given (height, width): smooth gradients plus noise, so resizing matters."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
        out.append(np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8))
    return out
