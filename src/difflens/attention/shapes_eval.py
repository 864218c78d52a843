"""Attention checked against the shapes world's ground truth (:mod:`difflens.shapes`).

* **Real images** (:func:`real_image_scores`): each held-out scene's image goes through the given-image route
  (:mod:`difflens.attention.given_image`) with its caption as prompt; every colour and shape word's map is
  scored against its object's mask (:func:`difflens.attention.faithfulness.score_map`: mIoU at 0.4,
  pointing game, AUROC). In a two-object scene the pointing game is "the word's peak lies in its own
  object"; ``peak_in_other`` records when it lies in the other object instead.
* **Generated images** (:func:`generated_scores`): ``a {color} {shape}`` is generated with the capture on;
  the generated image is segmented by the palette (:func:`difflens.shapes.segment_palette`) and the shape
  word's map is scored against the region of the prompt's colour. The per-step spatial entropy of each word
  (:mod:`difflens.attention.measures`) is kept, to see whether maps sharpen over the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

MapKind = Literal["maps", "text_renormalized"]


@dataclass(frozen=True)
class Setting:
    """Which maps are scored: noise levels (averaged), layer pattern (``None``: all), and for joint
    attention the raw probabilities or the text-renormalized ones."""

    levels: tuple[float, ...] = (0.5,)
    layers: str | None = None
    maps: MapKind = "maps"


def _word_maps(res: Any, kind: MapKind) -> Any:
    import numpy as np

    if kind == "maps" or res.aggregate.maps_text_renorm is None:
        return res.word_maps
    groups = [w["tokens"] for w in res.record["words"]]
    return np.stack([res.aggregate.maps_text_renorm[g].mean(0) for g in groups])


def real_image_scores(pipe: Any, model: str, seeds: Sequence[int], setting: Setting, seed: int = 0,
                      n_objects: int | None = None) -> list[dict[str, Any]]:
    """One row per (scene, colour or shape word): kind, iou, pointing, auroc, objects, peak_in_other.
    ``n_objects``: render every scene with that many objects (default: the scene seed decides)."""
    import numpy as np

    from difflens.attention.faithfulness import score_map, upsample
    from difflens.attention.given_image import ImageAttentionConfig, run_attention_on_image
    from difflens.attention.masks import scene_masks
    from difflens.shapes import SHAPES, render_scene

    rows = []
    for s in seeds:
        scene = render_scene(s, n_objects)
        masks = scene_masks(scene)
        cfg = ImageAttentionConfig(model=model, prompt=scene.caption, image=f"shapes:{s}",
                                   noise_levels=setting.levels, seed=seed, layers=setting.layers,
                                   prediction_check=False)
        res = run_attention_on_image(cfg, scene.image, pipe)
        bad = [c["name"] for c in res.checks if not c["ok"]]
        labels = [w["label"] for w in res.record["words"]]
        maps = _word_maps(res, setting.maps)
        union = np.logical_or.reduce([o.mask for o in scene.objects])
        for label, mask in masks.items():
            m = maps[labels.index(label)]
            sc = score_map(m, mask)
            up = upsample(m, mask.shape)
            peak = int(np.argmax(up))
            other = union & ~mask
            kind = "shape" if label.split("#")[0] in SHAPES else "color"
            rows.append({"seed": s, "word": label, "kind": kind, "objects": len(scene.objects),
                         "iou": sc.iou, "pointing": sc.pointing, "auroc": sc.auroc,
                         "peak_in_other": bool(other.flat[peak]), "failed_checks": bad})
    return rows


def summarize_real(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """mIoU / pointing / AUROC per word kind, and the two-object peak rates."""
    import numpy as np

    out: dict[str, Any] = {"n_scenes": len({r["seed"] for r in rows}),
                           "failed_checks": sorted({c for r in rows for c in r["failed_checks"]})}
    for kind in ("shape", "color"):
        sel = [r for r in rows if r["kind"] == kind]
        two = [r for r in sel if r["objects"] == 2]
        out[kind] = {"n": len(sel), "miou": float(np.mean([r["iou"] for r in sel])),
                     "pointing": float(np.mean([r["pointing"] for r in sel])),
                     "auroc": float(np.mean([r["auroc"] for r in sel if r["auroc"] is not None])),
                     "two_object_n": len(two),
                     "two_object_peak_in_own": float(np.mean([r["pointing"] for r in two])) if two else None,
                     "two_object_peak_in_other": float(np.mean([r["peak_in_other"] for r in two]))
                     if two else None}
    return out


def generated_scores(pipe: Any, model: str, seeds: Sequence[int], steps: int = 20,
                     min_region: int = 10) -> list[dict[str, Any]]:
    """One row per (prompt ``a {color} {shape}``, seed): the colour region's size, the shape word's IoU and
    pointing against it (None when the colour covers fewer than ``min_region`` pixels), and the per-step
    entropy of the colour and shape words."""
    import numpy as np

    from difflens.attention.api import AttentionConfig, run_attention
    from difflens.attention.faithfulness import score_map
    from difflens.shapes import COLORS, SHAPES, segment_palette

    rows = []
    for ci, color in enumerate(COLORS):
        for shape in SHAPES:
            for seed in seeds:
                cfg = AttentionConfig(model=model, prompt=f"a {color} {shape}", steps=steps, seed=seed,
                                      words=(color, shape), image_check=False)
                res = run_attention(cfg, pipe)
                img = (np.clip(res.image, 0, 1) * 255).round().astype(np.uint8)
                region = segment_palette(img) == ci
                sc = score_map(res.word_maps[1], region) if region.sum() >= min_region else None
                ent = res.record["entropy_per_step"]["words"]
                rows.append({"prompt": cfg.prompt, "seed": seed, "region": int(region.sum()),
                             "iou": sc.iou if sc else None, "pointing": sc.pointing if sc else None,
                             "entropy_shape": ent[shape], "entropy_color": ent[color],
                             "failed_checks": [c["name"] for c in res.checks if not c["ok"]]})
    return rows


def summarize_generated(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overlap with the colour region, and the mean entropy curve (does attention sharpen?)."""
    import numpy as np

    ok = [r for r in rows if r["iou"] is not None]
    e_shape = np.array([r["entropy_shape"] for r in rows])
    e_color = np.array([r["entropy_color"] for r in rows])
    return {"n": len(rows), "n_with_region": len(ok),
            "miou": float(np.mean([r["iou"] for r in ok])) if ok else None,
            "pointing": float(np.mean([r["pointing"] for r in ok])) if ok else None,
            "entropy_shape_per_step": e_shape.mean(0).tolist(),
            "entropy_color_per_step": e_color.mean(0).tolist(),
            "shape_sharpens_fraction": float(np.mean(e_shape[:, -1] < e_shape[:, 0])),
            "color_sharpens_fraction": float(np.mean(e_color[:, -1] < e_color[:, 0])),
            "failed_checks": sorted({c for r in rows for c in r["failed_checks"]})}
