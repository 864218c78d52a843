"""Attention faithfulness as numbers: how well a word's attention map covers that word's ground-truth mask.

Protocol (one map, one binary mask of the image's size H x W):

1. **Upsample** the map (its latent or layer grid) to H x W, bilinear with half-pixel centres
   (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``). Bilinear never overshoots,
   so no clamping is needed (DAAM upsamples bicubically and clamps at 0).
2. **Normalize** min-max to [0, 1]: m' = (m - min m) / (max m - min m). A flat map (max = min) has no
   location; it normalizes to all zeros, so it predicts nothing (IoU 0 unless the mask is empty), misses the
   pointing game and gets AUROC 0.5.
3. **IoU at threshold tau**: P = {m' > tau}; IoU = |P and M| / |P or M|. ``DAAM_THRESHOLD`` = 0.4 (Tang et
   al. 2023, "What the DAAM", binarize at 0.4). mIoU is the mean IoU over the scored (image, word) pairs;
   the sweep repeats it at ``SWEEP`` = 0.05, 0.10, ..., 0.95 (the best threshold is chosen on the same data,
   so its mIoU is optimistic).
4. **Pointing game** (Zhang et al. 2016): a hit when the upsampled map's maximum lies inside the mask (the
   first maximum in row-major order when several pixels tie).
5. **Mask AUROC**: pixels as samples, the mask as labels, the map as scores; the exact rank formula
   AUROC = (R+ - n+(n+ + 1)/2) / (n+ n-) with R+ the sum of the mask pixels' ranks (ties get their mean
   rank), equal to ``sklearn.metrics.roc_auc_score``. Undefined (``None``) for a mask covering every pixel.

An all-empty mask cannot be scored (no region to find); :func:`score_map` refuses it, and the run-level
scorer (:mod:`difflens.attention.scoring`) excludes such a word with a warning recorded in the output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError

DAAM_THRESHOLD = 0.4
SWEEP: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
PROTOCOL = {
    "upsampling": "bilinear, half-pixel centres (torch interpolate, align_corners=False), from the map's "
                  "grid to the mask's size",
    "normalization": "min-max to [0, 1] per map after upsampling; a flat map becomes all zeros",
    "prediction": "pixels with normalized value > threshold",
    "iou": "|prediction and mask| / |prediction or mask|; mIoU = mean over scored (image, word) pairs",
    "daam_threshold": DAAM_THRESHOLD,
    "sweep": list(SWEEP),
    "pointing": "hit when the upsampled map's maximum (first in row-major order) lies inside the mask",
    "auroc": "pixels as samples, mask as labels, map as scores; exact rank formula (ties: mean rank), "
             "None when the mask covers every pixel",
    "empty_masks": "excluded from every score, with a warning",
}


@dataclass(frozen=True)
class MapScore:
    """Scores of one map against one mask."""

    iou: float                      # at DAAM_THRESHOLD
    iou_sweep: tuple[float, ...]    # at each SWEEP threshold
    pointing: bool
    auroc: float | None
    flat: bool                      # the map had no variation

    def to_json(self) -> dict[str, Any]:
        return {"iou": self.iou, "iou_sweep": list(self.iou_sweep), "pointing": self.pointing,
                "auroc": self.auroc, "flat": self.flat}


def upsample(maps: Any, size: tuple[int, int]) -> Any:
    """(..., h, w) -> (..., H, W) float64, bilinear with half-pixel centres (identity at the same size)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    a = np.asarray(maps, dtype=np.float64)
    if tuple(a.shape[-2:]) == tuple(size):
        return a.copy()
    lead = a.shape[:-2]
    t = torch.from_numpy(a.reshape(1, -1, *a.shape[-2:]))
    up = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return up.numpy().reshape(*lead, *size)


def normalize(m: Any) -> Any:
    """Min-max to [0, 1]; a flat map becomes all zeros."""
    import numpy as np

    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def iou(pred: Any, mask: Any) -> float:
    """|pred and mask| / |pred or mask| (1.0 when both are empty)."""
    import numpy as np

    union = int(np.logical_or(pred, mask).sum())
    return float(np.logical_and(pred, mask).sum()) / union if union else 1.0


def auroc(scores: Any, labels: Any) -> float | None:
    """Exact AUROC by the rank formula (Mann-Whitney U / (n+ n-)); ``None`` when one class is absent."""
    import numpy as np
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)                 # ties get their mean rank
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def check_mask(mask: Any, name: str = "mask") -> Any:
    """A 2-D boolean mask, or a clear error."""
    import numpy as np

    m = np.asarray(mask)
    if m.ndim != 2:
        raise DifflensError(f"{name} has shape {tuple(m.shape)}; a mask is one 2-D image.",
                            "pass one single-channel (binary) mask per word")
    return m.astype(bool) if m.dtype != bool else m


def score_map(m: Any, mask: Any, thresholds: Sequence[float] = SWEEP) -> MapScore:
    """Score one map (h, w) against a binary mask (H, W) by the module's protocol."""
    import numpy as np

    mk = check_mask(mask)
    if not mk.any():
        raise DifflensError("the mask is empty; there is no region to score the map against.",
                            "drop the mask, or exclude the word")
    src = np.asarray(m, dtype=np.float64)
    flat = not float(src.max()) > float(src.min())      # judged on the map itself: upsampling adds rounding
    up = np.zeros(mk.shape) if flat else upsample(src, mk.shape)
    n = normalize(up)
    iou_daam = iou(n > DAAM_THRESHOLD, mk)
    sweep = tuple(iou(n > t, mk) for t in thresholds)
    hit = (not flat) and bool(mk.flat[int(np.argmax(up))])
    return MapScore(iou=iou_daam, iou_sweep=sweep, pointing=hit, auroc=0.5 if flat else auroc(up, mk),
                    flat=flat)


def summarize(scores: Iterable[MapScore], thresholds: Sequence[float] = SWEEP) -> dict[str, Any]:
    """Mean scores over pairs: n, miou (at 0.4), miou_sweep {threshold: mIoU}, best threshold, pointing
    accuracy, mean AUROC over pairs where it is defined (n_auroc)."""
    import numpy as np

    rows = list(scores)
    if not rows:
        return {"n": 0, "miou": None, "miou_sweep": {}, "best_threshold": None, "best_miou": None,
                "pointing": None, "auroc": None, "n_auroc": 0, "flat": 0}
    sweep = np.mean([r.iou_sweep for r in rows], axis=0)
    best = int(np.argmax(sweep))
    aucs = [r.auroc for r in rows if r.auroc is not None]
    return {"n": len(rows), "miou": float(np.mean([r.iou for r in rows])),
            "miou_sweep": {f"{t:g}": float(v) for t, v in zip(thresholds, sweep, strict=True)},
            "best_threshold": float(thresholds[best]), "best_miou": float(sweep[best]),
            "pointing": float(np.mean([r.pointing for r in rows])),
            "auroc": float(np.mean(aucs)) if aucs else None, "n_auroc": len(aucs),
            "flat": int(sum(r.flat for r in rows))}


def score_word_maps(maps: dict[str, Any], masks: dict[str, Any]) -> dict[str, MapScore]:
    """Pure API: score each word's map against its mask. ``maps``: word -> (h, w); ``masks``: word ->
    (H, W) binary, a subset of the words of ``maps``. Raises for a mask without a map or an empty mask."""
    out: dict[str, MapScore] = {}
    for word, mask in masks.items():
        if word not in maps:
            raise DifflensError(f"mask for {word!r}, but there is no map for that word "
                                f"({', '.join(maps) or 'no words'}).", "pass masks only for mapped words")
        out[word] = score_map(maps[word], mask)
    return out
