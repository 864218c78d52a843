"""The demo's image sets and prompts, from the shapes world (:mod:`difflens.shapes`) and scikit-learn's
bundled digits (no download).

* held-out shapes: ``render_scene`` over ``split_seeds("heldout", n, start)``; disjoint ``start`` ranges give
  the metrics reference set, the OOD reference set, the OOD in-distribution test set and the scenes whose
  attention is scored against their masks;
* digits: scikit-learn's 8x8 digits (0..16) scaled to 64x64 RGB (bilinear, half-pixel centres; white ink on
  black), the out-of-distribution set.
"""

from __future__ import annotations

import numpy as np

#: Disjoint held-out seed ranges (start offsets into the held-out split) of each demo image set.
STARTS = {"real": 0, "ood_reference": 10_000, "ood_test": 20_000, "scored": 30_000}

#: Prompts of the demo's generated samples: every colour and shape once, one and two objects.
DEMO_PROMPTS = (
    "a red circle",
    "a blue square",
    "a green triangle",
    "a yellow circle",
    "a red square and a blue triangle",
    "a yellow triangle and a green circle",
    "a blue circle and a red square",
    "a green square and a yellow triangle",
)


def heldout_shapes(n: int, start: int) -> tuple[np.ndarray, list[str], list[int]]:
    """(n, 64, 64, 3) uint8 held-out scenes, their captions and seeds."""
    from difflens.shapes import render_images, split_seeds

    seeds = split_seeds("heldout", n, start=start)
    images, captions = render_images(seeds)
    return images, captions, seeds


def digits_rgb(n: int, size: int = 64) -> np.ndarray:
    """(n, size, size, 3) uint8: scikit-learn's digits scaled from 8x8 (values / 16) by bilinear resampling
    with half-pixel centres (``torch.nn.functional.interpolate``, ``align_corners=False``)."""
    import torch
    from sklearn.datasets import load_digits

    d = torch.from_numpy(load_digits().images[:n] / 16.0).float()[:, None]
    up = torch.nn.functional.interpolate(d, size=(size, size), mode="bilinear", align_corners=False)
    return (up.clamp(0, 1).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
