"""Demo steps that `analyze` does not run itself, written into the run's mode folders so the report shows
them beside the mode's own outputs:

* ``attention/mmdit/``: the same prompt's attention maps on the shipped MMDiT (SD3 layout, joint attention);
* ``attention/real-image-{family}/``: attention on the typical rendered held-out scene (the median of the
  scored scenes' mean IoU; given-image route: VAE
  encode, noise to each level, one denoiser pass per level), and ``attention/faithfulness-{family}.json``:
  :func:`difflens.attention.scoring.score_runs` of ``SCORED`` held-out scenes against their ground-truth
  masks (mIoU at 0.4, pointing game, AUROC). The scored runs themselves go to ``RUN_DIR/scored/`` (not
  embedded in the report);
* ``latent/shape-to-shape/``: a prompt-to-prompt interpolation strip at one seed
  (:func:`difflens.latent.api.interpolate` with ``prompt2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Held-out scenes scored per family, and the noise levels of the given-image passes (0.1: the level
#: benchmarks/measure_attention_shapes.py uses for both families).
SCORED = 8
LEVELS = (0.1,)


def mmdit_attention(model: str, prompt: str, out: Path, steps: int, seed: int) -> None:
    """Generation attention of ``prompt`` on ``model`` into ``out`` (every joint-attention layer)."""
    from difflens.attention.api import AttentionConfig, run_attention, write_outputs

    cfg = AttentionConfig(model=model, prompt=prompt, steps=steps, seed=seed, device="cpu", offline=True,
                          image_check=False)
    write_outputs(run_attention(cfg), out)


def real_image_attention(family: str, model: str, seeds: list[int], attention_dir: Path,
                         scored_dir: Path) -> dict[str, Any]:
    """Attention of each scene's caption on its own image, all scored against their masks; the scene shown
    is the typical one, the median of the scenes' mean IoU (not the best). Returns the score record (also
    written as ``faithfulness-{family}.json``)."""
    from difflens.atomic import write_json
    from difflens.attention.api import write_outputs
    from difflens.attention.given_image import ImageAttentionConfig, run_attention_on_image
    from difflens.attention.scoring import score_runs
    from difflens.models import load_pipeline
    from difflens.shapes import render_scene

    pipe = load_pipeline(model, "float32", "cpu", True)
    runs, results = [], []
    for i, seed in enumerate(seeds):
        scene = render_scene(seed)
        cfg = ImageAttentionConfig(model=model, prompt=scene.caption, image=f"shapes:{seed}",
                                   noise_levels=LEVELS, device="cpu", offline=True,
                                   prediction_check=i == 0)
        result = run_attention_on_image(cfg, scene.image, pipe)
        run = scored_dir / family / f"scene-{seed}"
        write_outputs(result, run)
        runs.append(run)
        results.append(result)
    record = score_runs(runs, [f"shapes:{s}" for s in seeds])
    shown = _median_scene(record, [str(r) for r in runs])
    write_outputs(results[shown], attention_dir / f"real-image-{family}")
    record["demo"] = {"family": family, "model": model, "noise_levels": list(LEVELS),
                      "scenes": [int(s) for s in seeds], "layers": "every cross/joint-attention layer",
                      "shown_scene": int(seeds[shown]),
                      "shown_because": "median of the scenes' mean IoU at the DAAM threshold (typical, "
                                       "not best)"}
    write_json(attention_dir / f"faithfulness-{family}.json", record)
    return record


def _median_scene(record: dict[str, Any], runs: list[str]) -> int:
    """Index of the run whose mean IoU over its words is the (lower) median of all runs."""
    per_run = {r: [p["iou"] for p in record["pairs"] if p["run"] == r] for r in runs}
    means = [sum(v) / len(v) if v else 0.0 for v in per_run.values()]
    order = sorted(range(len(runs)), key=lambda i: means[i])
    return order[(len(order) - 1) // 2]


def shape_to_shape(model: str, out: Path, prompts: tuple[str, str], seed: int, frames: int,
                   steps: int) -> None:
    """Interpolation strip from ``prompts[0]`` to ``prompts[1]`` (same seed) into ``out``."""
    from difflens.latent.api import interpolate

    interpolate(model, out, prompt=prompts[0], prompt2=prompts[1], seeds=str(seed), frames=frames,
                steps=steps, device="cpu", offline=True)
