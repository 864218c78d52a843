"""attention_maps.png: per-word heat maps over the generated image, at several steps and over all steps.

One row per word, one column per shown step plus the mean over all steps. Each map has its own colour
scale and colour bar (the maps of different words and steps differ by orders of magnitude).
"""

from __future__ import annotations

from typing import Any

MAX_WORDS = 8
MAX_STEP_COLUMNS = 4
#: Function words shown last when a prompt has more than MAX_WORDS words (the data keeps every word).
STOP_WORDS = frozenset({"a", "an", "the", "of", "on", "in", "at", "and", "with", "to", "by", "is", "for",
                        "from", "as", "or", "its", "it", "this", "that", "into", "onto", "under", "over"})


def pick_rows(labels: list[str], max_rows: int = MAX_WORDS) -> list[int]:
    """Indices of the words to draw, in prompt order: all of them, or content words first."""
    if len(labels) <= max_rows:
        return list(range(len(labels)))
    base = [lab.split("#")[0].lower() for lab in labels]
    ranked = sorted(range(len(labels)), key=lambda i: (base[i] in STOP_WORDS, i))
    return sorted(ranked[:max_rows])


def pick_columns(step_index: list[int], max_columns: int = MAX_STEP_COLUMNS) -> list[int]:
    """Positions in ``step_index`` to show: evenly spaced, first and last included."""
    n = len(step_index)
    if n <= max_columns:
        return list(range(n))
    picks = {round(i * (n - 1) / (max_columns - 1)) for i in range(max_columns)}
    return sorted(picks)


def plot_word_maps(image: Any, word_maps: Any, per_step_word_maps: Any, step_index: list[int],
                   labels: list[str], title: str = "", entropy: Any | None = None,
                   column_names: list[str] | None = None) -> Any:
    """Figure with the grid of heat maps.

    ``image``: (Hi, Wi, 3) floats in [0, 1] or uint8; ``word_maps``: (Wd, h, w) over all steps;
    ``per_step_word_maps``: (K, Wd, h, w) for the kept steps ``step_index``; ``entropy``: optional
    (Wd,) spatial entropy of the all-steps maps, printed in the column title; ``column_names``: titles of
    the kept steps (default ``step i``; the given-image route names its noise levels).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    hi, wi = img.shape[:2]
    rows = pick_rows(labels)
    n_words = len(rows)
    cols = pick_columns(step_index)
    n_cols = 1 + len(cols) + 1
    aspect = wi / hi
    cell_h = 2.0
    cell_w = cell_h * aspect + 0.55
    n_rows = max(n_words, 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * cell_w, n_rows * cell_h + 0.8), squeeze=False,
                             layout="constrained")
    extent = (0, wi, hi, 0)
    gray = img.mean(axis=2)
    for r in range(max(n_words, 1)):
        ax = axes[r][0]
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title("image", fontsize=9)
        if n_words == 0:
            ax.set_ylabel("(no words)", fontsize=10)
            for ax2 in axes[r][1:]:
                ax2.axis("off")
            continue
        wi = rows[r]
        ax.set_ylabel(labels[wi], fontsize=11, rotation=0, ha="right", va="center", labelpad=8)
        panels = [(per_step_word_maps[c][wi], column_names[c] if column_names else f"step {step_index[c]}")
                  for c in cols]
        name = "all levels" if column_names else "all steps"
        if entropy is not None:
            name += f"\nentropy {float(entropy[wi]):.3f}"
        panels.append((word_maps[wi], name))
        for j, (m, name) in enumerate(panels, start=1):
            ax = axes[r][j]
            ax.imshow(gray, cmap="gray", extent=extent, vmin=0, vmax=255)
            m = np.asarray(m, dtype=np.float64)
            lo, hi_v = float(m.min()), float(m.max())
            if hi_v <= lo:
                hi_v = lo + 1e-12
            im = ax.imshow(m, cmap="inferno", alpha=0.72, extent=extent, interpolation="bilinear",
                           vmin=lo, vmax=hi_v)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or j == len(panels):
                ax.set_title(name, fontsize=8)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            cb.ax.tick_params(labelsize=6)
            cb.locator = MaxNLocator(nbins=4)
            cb.formatter = FuncFormatter(_tick)
            cb.update_ticks()
    if len(labels) > MAX_WORDS:
        title += f"  ({MAX_WORDS} of {len(labels)} words, content words first; pass --words to choose)"
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _tick(value: float, _pos: int) -> str:
    """Short colour-bar labels without a shared offset/exponent text (which collides with titles)."""
    return f"{value:.3g}"
