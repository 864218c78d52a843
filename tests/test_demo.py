"""The demo's shapes-world data (held-out scenes, digits) and the report's attention-faithfulness section.

The demo itself (`make demo`) takes a minute or more on 2 cores and is run by hand; these tests cover what
it builds on, fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def test_demo_image_sets_are_disjoint_held_out_scenes_and_digits() -> None:
    from difflens.demo.extras import SCORED
    from difflens.demo.run import N_OOD, N_REAL
    from difflens.demo.shapes_data import STARTS, digits_rgb, heldout_shapes
    from difflens.shapes import split_seeds

    sizes = {"real": N_REAL, "ood_reference": N_OOD, "ood_test": N_OOD, "scored": SCORED}
    seen: set[int] = set()
    for key, n in sizes.items():
        seeds = set(split_seeds("heldout", n, start=STARTS[key]))
        assert not seeds & seen, key  # no scene serves as reference and as test
        seen |= seeds
    train = set(split_seeds("train", 12000))
    assert not seen & train

    images, captions, seeds = heldout_shapes(3, STARTS["scored"])
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8 and len(captions) == 3
    assert all(c.startswith("a ") for c in captions)
    # background pixels (the corners hold no object often enough) are light
    assert np.median(images.reshape(-1, 3), axis=0).min() > 200

    digits = digits_rgb(4)
    assert digits.shape == (4, 64, 64, 3) and digits.dtype == np.uint8
    assert (digits[..., 0] == digits[..., 2]).all()  # gray, replicated to RGB
    assert digits.max() > 200 and digits.min() < 10  # white ink on black: not the shapes' light background


def _run_folder(tmp_path: Path, mode: str) -> Path:
    """A minimal run folder whose run.json lists one finished ``mode`` (its subfolder created)."""
    run = tmp_path / "run"
    (run / mode).mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": "m", "label": "demo", "config": {}, "versions": {},
                                              "notes": [], "fingerprints": {},
                                              "modes": {mode: {"status": "ok", "seconds": 1.0}}}))
    return run


def test_report_shows_faithfulness_scores(tmp_path: Path) -> None:
    from difflens.report.render import write_report

    run = _run_folder(tmp_path, "attention")

    def summary(miou: float) -> dict:
        return {"n": 8, "miou": miou, "best_miou": miou + 0.1, "best_threshold": 0.25, "pointing": 0.875,
                "auroc": 0.9123}

    record = {"mode": "attention_score", "runs": [{"run": "a"}, {"run": "b"}], "overall": summary(0.4321),
              "per_word": {"circle": summary(0.6789), "red": summary(0.1234)},
              "demo": {"noise_levels": [0.2, 0.4]}}
    (run / "attention" / "faithfulness-unet.json").write_text(json.dumps(record))
    html = write_report([run]).read_text()
    assert "Attention faithfulness: faithfulness-unet.json" in html
    for text in ("0.432", "0.679", "0.123", "0.532 @ 0.25", "0.875", "0.912", "noise levels [0.2, 0.4]"):
        assert text in html, text
    # one row per word plus the overall row
    section = html.split("Attention faithfulness")[1].split("</table>")[0]
    assert section.count("<tr>") == 4


def test_the_real_image_shown_is_the_median_scene_not_the_best() -> None:
    from difflens.demo.extras import _median_scene

    runs = ["s0", "s1", "s2", "s3"]
    ious = {"s0": [0.9, 0.7], "s1": [0.1], "s2": [0.4, 0.2], "s3": [0.5]}  # means 0.8, 0.1, 0.3, 0.5
    record = {"pairs": [{"run": r, "iou": v} for r in runs for v in ious[r]]}
    assert _median_scene(record, runs) == 2  # sorted means 0.1, 0.3, 0.5, 0.8: the lower median, 0.3
    assert _median_scene(record, runs[:3]) == 2  # 0.1, 0.3, 0.8: the median


def test_report_shows_per_prompt_tables_of_per_image_scores(tmp_path: Path) -> None:
    """A preference metric's per-prompt table (metrics JSON) is a report table, lowest mean first."""
    from difflens.report.render import write_report

    run = _run_folder(tmp_path, "metrics")
    entry = {"value": 25.0, "ci95": [24.0, 26.0], "n": 3,
             "per_prompt": {"a red circle": {"count": 2, "mean": 27.5}, "a blue square": {"count": 1,
                                                                                       "mean": 20.25}}}
    (run / "metrics" / "metrics.json").write_text(json.dumps({"metrics": {"hpsv2": entry}}))
    html = write_report([run]).read_text()
    section = html.split("hpsv2 per prompt")[1].split("</table>")[0]
    assert section.index("a blue square") < section.index("a red circle")  # lowest mean first
    assert "20.25" in section and "27.5" in section and "95% CI [24, 26]" in html
