"""Pictures of latent-mode results: image strips/grids, the step-distance plot, OOD score histograms.

Strips are assembled with PIL from the frames' exact pixels (tiles enlarged by an integer nearest-neighbour
factor when smaller than 128 px, so small models stay visible), under a header row of labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_MIN_TILE = 128
_GAP = 4
_HEADER = 16


def image_strip(frames_uint8: Sequence[Any], labels: Sequence[str]) -> Any:
    """One row of (H, W, 3) uint8 frames with a label above each; returns a PIL image."""
    from PIL import Image, ImageDraw

    h, w = frames_uint8[0].shape[:2]
    k = max(1, -(-_MIN_TILE // max(h, w)))
    th, tw = h * k, w * k
    canvas = Image.new("RGB", (len(frames_uint8) * (tw + _GAP) - _GAP, th + _HEADER), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (frame, label) in enumerate(zip(frames_uint8, labels, strict=True)):
        tile = Image.fromarray(frame)
        if k > 1:
            tile = tile.resize((tw, th), Image.Resampling.NEAREST)
        x = i * (tw + _GAP)
        canvas.paste(tile, (x, _HEADER))
        draw.text((x + 2, 2), label, fill="black")
    return canvas


def save_strip(dest: str | Path, frames_uint8: Sequence[Any], labels: Sequence[str]) -> None:
    from difflens.atomic import save_image

    save_image(dest, image_strip(frames_uint8, labels))


def save_step_distance_plot(dest: str | Path, times: Sequence[float], distances: Sequence[float],
                            feature_space: str, title: str = "") -> None:
    """Distance between consecutive frames against the t where each step ends; the largest jump marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from difflens.atomic import save_figure

    t = np.asarray(times[1:], dtype=float)
    d = np.asarray(distances, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(t, d, marker="o", color="tab:blue")
    ax.axhline(d.mean(), color="gray", linestyle="--", linewidth=1, label=f"mean {d.mean():.3g}")
    j = int(np.argmax(d))
    ax.plot([t[j]], [d[j]], marker="o", markersize=10, markerfacecolor="none", color="tab:red",
            label=f"largest jump (frame {j + 1})")
    ax.set_xlabel("t at the end of the step")
    ax.set_ylabel(f"step distance ({feature_space} features)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Distance between consecutive frames")
    ax.legend(fontsize=8)
    save_figure(dest, fig)


def save_score_histogram(dest: str | Path, method: str, groups: dict[str, Any]) -> None:
    """Overlaid histograms of one method's scores per group (reference / test / ood)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from difflens.atomic import save_figure

    nonempty = {k: np.asarray(v, dtype=float) for k, v in groups.items() if len(v)}
    values = np.concatenate(list(nonempty.values()))
    lo, hi = float(values.min()), float(values.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colors = {"reference (in-sample)": "tab:gray", "test": "tab:blue", "ood": "tab:red"}
    for name, vals in nonempty.items():
        ax.hist(vals, bins=bins, alpha=0.5, label=f"{name} (n={len(vals)})", color=colors.get(name))
    ax.set_xlabel(f"{method} score (higher = more unusual)")
    ax.set_ylabel("images")
    ax.set_title(f"OOD scores: {method}")
    ax.legend(fontsize=8)
    save_figure(dest, fig)
