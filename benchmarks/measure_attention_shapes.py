"""Measure attention faithfulness on the shipped shapes models (run by hand; prints JSON).

1. Grid (``--grid-n`` held-out scenes from seed offset 50,000, disjoint from the final ones): shape- and
   colour-word mIoU at 0.4 and pointing for every noise level
   and every layer group (one given-image pass per level with per-layer maps), plus the mean over levels,
   and for the MMDiT the text-renormalized maps.
2. Final (``--n`` held-out scenes, default 100) at the chosen levels and layers of each family
   (:mod:`difflens.attention.shapes_eval`): shape and colour mIoU, pointing, AUROC, two-object peaks.
3. Generated images (``--gen-seeds`` per ``a {color} {shape}`` prompt, ``--steps``): shape word vs the
   palette region of the prompt's colour; per-step entropy curves.

    .venv/bin/python benchmarks/measure_attention_shapes.py --out /tmp/attention-shapes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def load(family: str) -> tuple[Any, str]:
    from difflens.models import load_pipeline
    from difflens.shapes import pretrained

    path = pretrained(family)
    return load_pipeline(path, "float32", "cpu", offline=True), path


def grid(pipe: Any, model: str, seeds: list[int], levels: list[float]) -> dict[str, Any]:
    """Scores per (layer group or all, level); maps are linear, so level means are means of maps."""
    import numpy as np

    from difflens.attention.faithfulness import score_map
    from difflens.attention.given_image import ImageAttentionConfig, run_attention_on_image
    from difflens.attention.masks import scene_masks
    from difflens.attention.scoring import layer_group
    from difflens.shapes import SHAPES, render_scene

    store = []
    names: list[str] = []
    for s in seeds:
        scene = render_scene(s)
        per = {}
        for lv in levels:
            res = run_attention_on_image(ImageAttentionConfig(model=model, prompt=scene.caption, image=str(s),
                                                              noise_levels=(lv,), breakdown=True,
                                                              prediction_check=False), scene.image, pipe)
            groups = [w["tokens"] for w in res.record["words"]]
            names = [la["name"] for la in res.record["layers"]]
            layer_maps = np.stack([res.aggregate.per_layer[:, g].mean(1) for g in groups], 1)
            renorm = (np.stack([res.aggregate.maps_text_renorm[g].mean(0) for g in groups])
                      if res.aggregate.maps_text_renorm is not None else None)
            per[lv] = {"labels": [w["label"] for w in res.record["words"]], "all": res.word_maps,
                       "layers": layer_maps, "renorm": renorm}
        store.append((scene_masks(scene), per))
    kinds = ["all", *sorted({layer_group(n) for n in names})]
    if store[0][1][levels[0]]["renorm"] is not None:
        kinds.append("text_renormalized")

    def score(kind: str, lv: list[float]) -> dict[str, float]:
        acc: dict[str, list[Any]] = {"shape": [], "color": []}
        for masks, per in store:
            labels = per[lv[0]]["labels"]
            for label, mask in masks.items():
                j = labels.index(label)
                if kind == "all":
                    m = np.mean([per[x]["all"][j] for x in lv], 0)
                elif kind == "text_renormalized":
                    m = np.mean([per[x]["renorm"][j] for x in lv], 0)
                else:
                    idx = [i for i, n in enumerate(names) if layer_group(n) == kind]
                    m = np.mean([per[x]["layers"][idx, j].mean(0) for x in lv], 0)
                acc["shape" if label.split("#")[0] in SHAPES else "color"].append(score_map(m, mask))
        return {f"{k}_{f}": round(float(np.mean([getattr(r, f) for r in v])), 4)
                for k, v in acc.items() for f in ("iou", "pointing")}

    table = {}
    for kind in kinds:
        for lv in levels:
            table[f"{kind} @ {lv:g}"] = score(kind, [lv])
        table[f"{kind} @ mean of {','.join(f'{x:g}' for x in levels)}"] = score(kind, levels)
    return table


def main(argv: list[str] | None = None) -> None:
    import torch

    from difflens.attention.shapes_eval import (
        Setting,
        generated_scores,
        real_image_scores,
        summarize_generated,
        summarize_real,
    )
    from difflens.shapes import split_seeds

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="unet,mmdit")
    p.add_argument("--grid-n", type=int, default=30)
    p.add_argument("--grid-levels", default="0.1,0.2,0.3,0.5,0.7,0.9")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--unet-levels", default="0.3")
    p.add_argument("--unet-layers", default=None)
    p.add_argument("--mmdit-levels", default="0.3")
    p.add_argument("--mmdit-layers", default=None)
    p.add_argument("--mmdit-maps", default="maps", choices=("maps", "text_renormalized"))
    p.add_argument("--gen-seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", default="", help="comma list of grid,final,generated to skip")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    skip = set(filter(None, args.skip.split(",")))
    out: dict[str, Any] = {}
    for family in args.families.split(","):
        pipe, model = load(family)
        res: dict[str, Any] = {}
        if "grid" not in skip:
            t0 = time.perf_counter()
            # grid scenes are disjoint from the final ones, so the chosen setting is not fitted to them
            res["grid"] = grid(pipe, model, split_seeds("heldout", args.grid_n, start=50_000),
                               [float(x) for x in args.grid_levels.split(",")])
            res["grid_seconds"] = time.perf_counter() - t0
        setting = Setting(levels=tuple(float(x) for x in getattr(args, f"{family}_levels").split(",")),
                          layers=getattr(args, f"{family}_layers"),
                          maps=args.mmdit_maps if family == "mmdit" else "maps")
        if "final" not in skip:
            t0 = time.perf_counter()
            rows = real_image_scores(pipe, model, split_seeds("heldout", args.n), setting)
            res["final"] = {"setting": setting.__dict__, **summarize_real(rows),
                            "seconds": time.perf_counter() - t0}
        if "generated" not in skip:
            t0 = time.perf_counter()
            rows = generated_scores(pipe, model, list(range(args.gen_seeds)), steps=args.steps)
            res["generated"] = {**summarize_generated(rows), "seconds": time.perf_counter() - t0,
                                "steps": args.steps, "seeds": args.gen_seeds}
        out[family] = res
        print(json.dumps({family: res}, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
