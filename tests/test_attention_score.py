"""Attention faithfulness scoring (`difflens attention score`): the scores against hand-made maps and masks
whose answers are known, AUROC against scikit-learn, the run reader (token -> word aggregation, steps,
layer groups) on a hand-written run, the shapes world's masks, a real run end to end, and every bad input
(exit 2, one line, nothing written)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from difflens.attention.faithfulness import SWEEP, MapScore, auroc, iou, normalize, score_map, summarize
from difflens.attention.scoring import layer_group, load_run, score_runs
from difflens.cli import main
from difflens.errors import DifflensError


def _asym_mask(n: int = 32) -> np.ndarray:
    """An L-shaped region in the top-left: not symmetric under transposition."""
    m = np.zeros((n, n), bool)
    m[2:6, 2:24] = True      # a long horizontal bar
    m[6:12, 2:6] = True      # and a short leg
    return m


# -- the scores ------------------------------------------------------------------------------------------
def test_perfect_map_scores_one() -> None:
    mask = _asym_mask()
    s = score_map(mask.astype(float), mask)
    assert s.iou == 1.0 and s.pointing and s.auroc == 1.0 and not s.flat
    assert s.iou_sweep == (1.0,) * len(SWEEP)


def test_block_map_on_a_coarser_grid_recovers_the_block() -> None:
    """Bilinear upsampling with half-pixel centres puts a step's crossing of 0.5 exactly on the cell
    boundary (values 1/8, 3/8 | 5/8, 7/8 at 4x), so at 0.4 a band map gives back its band exactly (a band:
    at a block's corners the two ramps multiply, 5/8 x 5/8 < 0.4); a mask one pixel off does not."""
    low = np.zeros((8, 8))
    low[1:4, :] = 1.0
    mask = np.kron(low, np.ones((4, 4))).astype(bool)
    assert score_map(low, mask).iou == 1.0
    shifted = np.roll(mask, 1, axis=0)
    assert score_map(low, shifted).iou < 0.95


def test_transposed_map_scores_lower() -> None:
    mask = _asym_mask()
    yy, xx = np.mgrid[0:32, 0:32]
    blob = np.exp(-((yy - 4) ** 2 + (xx - 12) ** 2) / 40.0) + 0.6 * mask      # peaks on the bar
    right, wrong = score_map(blob, mask), score_map(blob.T, mask)
    assert right.pointing and not wrong.pointing
    assert right.iou > 0.6 and wrong.iou < right.iou - 0.3
    assert right.auroc > 0.95 and wrong.auroc < right.auroc - 0.2


def test_auroc_equals_sklearn_including_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for k in range(20):
        scores = rng.random(300)
        if k % 2:
            scores = np.round(scores * 5) / 5          # heavy ties
        labels = rng.random(300) < 0.2 + 0.03 * k
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(np.arange(5.0), np.ones(5, bool)) is None


def test_flat_map_and_empty_mask() -> None:
    mask = _asym_mask()
    s = score_map(np.full((8, 8), 0.3), mask)
    assert s.flat and s.iou == 0.0 and not s.pointing and s.auroc == 0.5
    assert normalize(np.full((3, 3), 2.0)).max() == 0.0
    with pytest.raises(DifflensError, match="mask is empty"):
        score_map(np.ones((8, 8)), np.zeros((32, 32), bool))


def test_summary_means() -> None:
    a = MapScore(1.0, (1.0, 0.5), True, 1.0, False)
    b = MapScore(0.0, (0.5, 0.0), False, None, False)
    s = summarize([a, b], thresholds=(0.1, 0.2))
    assert s["miou"] == 0.5 and s["pointing"] == 0.5 and s["auroc"] == 1.0 and s["n_auroc"] == 1
    assert s["miou_sweep"] == {"0.1": 0.75, "0.2": 0.25} and s["best_threshold"] == 0.1
    assert iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0


def test_layer_groups() -> None:
    assert layer_group("down_blocks.1.attentions.0.transformer_blocks.0.attn2") == "down_blocks.1"
    assert layer_group("mid_block.attentions.0.transformer_blocks.0.attn2") == "mid_block"
    assert layer_group("transformer_blocks.3.attn") == "transformer_blocks.3"


# -- runs ------------------------------------------------------------------------------------------------
PROMPT = "a red circle and a blue square"
LABELS = ["a#1", "red", "circle", "and", "a#2", "blue", "square"]


def _masks() -> dict[str, np.ndarray]:
    red = np.zeros((32, 32), bool)
    red[4:12, 4:14] = True
    blue = np.zeros((32, 32), bool)
    blue[18:30, 16:28] = True
    return {"red": red, "circle": red, "blue": blue, "square": blue}


def _write_run(folder: Path, prompt: str = PROMPT, labels: list[str] | None = None,
               maps: dict[str, np.ndarray] | None = None, size: int = 32) -> Path:
    """A hand-written run: word i has token i, except 'circle', which has tokens 2 and 7 (mean-aggregated).
    Step 0 holds the true maps, step 1 their transposes; layers: two under down_blocks.0 (true maps) and one
    under up_blocks.1 (flat)."""
    labels = labels or LABELS
    maps = maps if maps is not None else {k: v.astype(np.float32) for k, v in _masks().items()}
    n_tok = len(labels) + 1
    tokens = np.full((n_tok, size, size), 0.01, np.float32)
    groups = [[i] for i in range(len(labels))]
    for i, lab in enumerate(labels):
        if lab in maps:
            tokens[i] = maps[lab]
    if "circle" in labels:
        c = labels.index("circle")
        groups[c] = [c, len(labels)]
        tokens[len(labels)] = tokens[c][::-1, ::-1]   # the second token looks elsewhere
    word_maps = np.stack([tokens[g].mean(0) for g in groups])
    per_step = np.stack([tokens, tokens.transpose(0, 2, 1)])
    per_layer = np.stack([tokens, tokens, np.zeros_like(tokens)])
    layers = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2",
              "down_blocks.0.attentions.1.transformer_blocks.0.attn2",
              "up_blocks.1.attentions.0.transformer_blocks.0.attn2"]
    rec = {"mode": "attention", "prompt": prompt, "prompt_tokenized": prompt, "height": size, "width": size,
           "word_aggregation": "mean", "per_step_indices": [0, 1],
           "words": [{"label": lab, "tokens": g} for lab, g in zip(labels, groups, strict=True)],
           "layers": [{"name": n} for n in layers]}
    folder.mkdir(parents=True)
    (folder / "attention.json").write_text(json.dumps(rec))
    np.savez(folder / "attention.npz", word_maps=word_maps, per_step=per_step, per_layer=per_layer)
    return folder


def _mask_dir(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for name, m in masks.items():
        Image.fromarray((m * 255).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def test_hand_written_run(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    masks = _masks()
    loaded = load_run(run)
    assert loaded.words == LABELS and [k for k, _ in loaded.per_step] == ["step 0", "step 1"]
    assert sorted(loaded.per_layer_group) == ["down_blocks.0", "up_blocks.1"]
    rec = score_runs([run], [_mask_dir(tmp_path / "m", masks)])
    # red, blue, square: their own mask -> 1; circle: the mean of its two tokens covers its mask and the
    # mirrored region, so IoU at 0.4 = |mask| / (|mask| + |mirror|) = 1/2 (disjoint, equal areas).
    pairs = {p["word"]: p for p in rec["pairs"]}
    assert {w: pairs[w]["iou"] for w in ("red", "blue", "square")} == {"red": 1.0, "blue": 1.0, "square": 1.0}
    assert pairs["circle"]["iou"] == pytest.approx(0.5)
    assert rec["overall"]["n"] == 4 and rec["overall"]["miou"] == pytest.approx(3.5 / 4)
    assert set(rec["per_word"]) == {"red", "circle", "blue", "square"}
    # step 1 holds the transposed maps: scored lower than step 0
    step0, step1 = rec["per_step"]["step 0"], rec["per_step"]["step 1"]
    transposed = {k: m.T.astype(float) for k, m in masks.items()}
    transposed["circle"] = (masks["circle"].T + masks["circle"][::-1, ::-1].T) / 2.0
    expected1 = np.mean([iou(normalize(transposed[k]) > 0.4, m) for k, m in masks.items()])
    assert step0["miou"] == pytest.approx(np.mean([1, 1, 1, 0.5])) and step1["miou"] == pytest.approx(
        expected1) and step1["miou"] < step0["miou"]
    assert rec["per_layer_group"]["down_blocks.0"]["miou"] == pytest.approx(step0["miou"])
    assert rec["per_layer_group"]["up_blocks.1"]["miou"] == 0.0         # flat maps predict nothing
    assert rec["mode"] == "attention_score" and rec["protocol"]["daam_threshold"] == 0.4 and "versions" in rec


def test_shapes_masks(tmp_path: Path) -> None:
    from difflens.attention.masks import scene_masks
    from difflens.shapes import render_scene

    scene = render_scene(3)                     # "a yellow triangle and a blue triangle"
    masks = scene_masks(scene)
    assert sorted(masks) == ["blue", "triangle#1", "triangle#2", "yellow"]
    assert np.array_equal(masks["triangle#2"], masks["blue"]) and not np.array_equal(masks["triangle#1"],
                                                                                      masks["blue"])
    from difflens.attention.masks import word_labels

    labels = [lab for lab, _ in word_labels(scene.caption)]
    maps = {k: v.astype(np.float32) for k, v in masks.items()}
    run = _write_run(tmp_path / "run", scene.caption, labels, maps, size=64)
    rec = score_runs([run], ["shapes:3"])
    assert rec["overall"]["miou"] == 1.0 and rec["overall"]["pointing"] == 1.0 and rec["overall"]["n"] == 4
    with pytest.raises(DifflensError, match="caption"):
        score_runs([run], ["shapes:4"])


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_cli_end_to_end_on_a_real_run(tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path) -> None:
    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(img)
    run = tmp_path / "run"
    assert _run(["attention", "--model", str(tiny_pipeline_dir("sd15")), "--prompt", PROMPT,
                 "--image", str(img), "--noise-level", "0.3,0.7", "--breakdown", "--device", "cpu",
                 "--out", str(run)]) == 0
    out = tmp_path / "score.json"
    assert _run(["attention", "score", str(run), "--masks", str(_mask_dir(tmp_path / "m", _masks())),
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert list(rec["per_step"]) == ["level 0.3", "level 0.7"]
    layers = json.loads((run / "attention.json").read_text())["layers"]
    assert set(rec["per_layer_group"]) == {layer_group(la["name"]) for la in layers}
    assert len(rec["per_layer_group"]) >= 2
    for s in (rec["overall"], *rec["per_word"].values()):
        assert 0.0 <= s["miou"] <= 1.0 and 0.0 <= s["pointing"] <= 1.0 and 0.0 <= s["auroc"] <= 1.0
        assert len(s["miou_sweep"]) == len(SWEEP)


def _bad_setup(case: str, tmp_path: Path) -> tuple[list[str], str]:
    run = _write_run(tmp_path / "run")
    masks = _masks()
    mdir = tmp_path / "m"
    if case == "mask_size":
        _mask_dir(mdir, {"red": np.ones((16, 16), bool)})
        return [str(run), "--masks", str(mdir)], "is 16x16 (WxH); the image is 32x32"
    if case == "word_not_in_prompt":
        _mask_dir(mdir, {"red": masks["red"], "zebra": masks["red"]})
        return [str(run), "--masks", str(mdir)], "'zebra', which is not a word of the prompt"
    if case == "ambiguous_repeated_word":
        _mask_dir(mdir, {"a": masks["red"]})
        return [str(run), "--masks", str(mdir)], "name the masks by occurrence: a#1, a#2"
    if case == "word_not_mapped":
        run2 = _write_run(tmp_path / "run2", labels=["a#1", "red"], maps={"red": masks["red"]})
        _mask_dir(mdir, {"blue": masks["blue"]})
        return [str(run2), "--masks", str(mdir)], "the run has no map for prompt word 'blue'"
    if case == "unreadable_mask":
        mdir.mkdir()
        (mdir / "red.png").write_bytes(b"garbage")
        return [str(run), "--masks", str(mdir)], "cannot read mask"
    if case == "not_a_run":
        (tmp_path / "empty").mkdir()
        _mask_dir(mdir, {"red": masks["red"]})
        return [str(tmp_path / "empty"), "--masks", str(mdir)], "is not an attention run folder"
    if case == "count_mismatch":
        _mask_dir(mdir, {"red": masks["red"]})
        return [str(run), str(run), "--masks", str(mdir)], "2 run(s) but 1 --masks"
    if case == "all_masks_empty":
        _mask_dir(mdir, {"red": np.zeros((32, 32), bool)})
        return [str(run), "--masks", str(mdir)], "every mask is empty"
    if case == "bad_shapes_seed":
        return [str(run), "--masks", "shapes:x"], "is not a seed"
    raise AssertionError(case)


BAD = ("mask_size", "word_not_in_prompt", "ambiguous_repeated_word", "word_not_mapped", "unreadable_mask",
       "not_a_run", "count_mismatch", "all_masks_empty", "bad_shapes_seed")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_and_writes_nothing(case: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args, expected = _bad_setup(case, tmp_path)
    out = tmp_path / "score.json"
    code = _run(["attention", "score", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in " ".join(err.split())
    assert "Traceback" not in err and err.count("error:") == 1
    assert not out.exists()


def test_one_empty_mask_is_excluded_with_a_warning(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    masks: dict[str, Any] = dict(_masks())
    masks["blue"] = np.zeros((32, 32), bool)
    run = _write_run(tmp_path / "run")
    out = tmp_path / "s.json"
    assert _run(["attention", "score", str(run), "--masks", str(_mask_dir(tmp_path / "m", masks)),
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert "blue" not in rec["per_word"] and rec["overall"]["n"] == 3
    assert any("'blue' is empty" in w for w in rec["warnings"])
    assert "warning: " in capsys.readouterr().err
