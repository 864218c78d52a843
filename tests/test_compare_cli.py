"""``difflens compare`` end to end on the shipped shapes-world models, and its bad input.

Two sample sets from the same 3 prompts x 2 images: the UNet pipeline (A) and the MMDiT pipeline (B), made
with ``difflens generate`` at the models' native 64 px and 2 steps (seeded), scored with the shipped
shapes-world CLIP (offline). Each bad input is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from difflens.shapes import pretrained, pretrained_clip

PROMPTS = ("a red circle", "a blue square", "a green triangle")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from difflens.cli import main

    root = tmp_path_factory.mktemp("compare")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = {"prompts": prompts}
    for side, family in (("A", "unet"), ("B", "mmdit")):
        folder = root / side
        try:
            main(["generate", "--model", pretrained(family), "--prompts", str(prompts), "--num-samples", "6",
                  "--out", str(folder), "--steps", "2", "--device", "cpu", "--offline"])
        except SystemExit as exc:  # typer exits 0 on success
            assert not exc.code, exc.code
        out[side] = folder
    return out


def _compare(a: Path, b: Path, *extra: str) -> list[str]:
    return ["compare", "--a", str(a), "--b", str(b), "--metrics", "clip", "--clip-model", pretrained_clip(),
            "--offline", "--device", "cpu", *extra]


def test_compare_two_shapes_models_gives_a_verdict(samples: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, page = tmp_path / "cmp.json", tmp_path / "cmp.html"
    argv = _compare(samples["A"], samples["B"], "--json", str(out), "--report", str(page), "--bootstrap",
                    "200")
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["mode"] == "compare" and rec["schema_version"] == 1 and rec["n_prompts"] == 3
    assert rec["a"]["n_images"] == rec["b"]["n_images"] == 6 and rec["a"]["prompts_from"] == "manifest.jsonl"
    entry = rec["metrics"]["clip_score"]
    assert entry["n_a"] == entry["n_b"] == 6 and entry["n_prompts"] == 3
    assert entry["verdict"].startswith(("A beats B on CLIP score", "B beats A on CLIP score",
                                        "no clear difference on CLIP score"))
    assert entry["verdict"] in stdout
    lo, hi = entry["win_rate"]["ci95"]
    assert 0.0 <= lo <= entry["win_rate"]["value"] <= hi <= 1.0
    rows = rec["per_prompt"]["clip_score"]
    assert [r["prompt"] for r in rows] == sorted(PROMPTS)
    assert all(r["n_a"] == r["n_b"] == 2 for r in rows)
    assert entry["mean_a"] == pytest.approx(np.mean([r["mean_a"] for r in rows]), rel=1e-12)
    assert rec["protocol"]["clip_score"]["weights_sha256"]
    assert any("only 3 prompts" in w for w in rec["warnings"])
    # the same CLIP score as difflens's own CLIP-score code path for A's images (2 images per prompt, so
    # the prompt-weighted mean is the image mean); other batches: float32 noise only, far below 1e-4
    from difflens.generate.pairs import read_paired_folder
    from difflens.metrics.clip import compute_clip_score

    paired = read_paired_folder(samples["A"])
    ref = compute_clip_score(paired.files, paired.prompts, clip_model=pretrained_clip(), device="cpu",
                             offline=True, batch_size=4)
    assert entry["mean_a"] == pytest.approx(ref.value, rel=1e-4, abs=1e-4)
    html = page.read_text(encoding="utf-8")
    assert "A vs B, prompt by prompt" in html and entry["verdict"] in html and "a green triangle" in html
    # written into a run folder, the record joins that run's report (difflens report RUN)
    from difflens.report.render import write_report

    run = tmp_path / "run"
    (run / "compare").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": "m", "modes": {}}), encoding="utf-8")
    shutil.copy(out, run / "compare" / "a-vs-b.json")
    html = write_report([run]).read_text(encoding="utf-8")
    assert 'href="#paired-0"' in html and entry["verdict"] in html and "Summary" in html


def test_a_folder_without_manifest_takes_prompts_cycled_and_ties_with_itself(
        samples: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(samples["A"] / "images", plain)  # 000000.png ... in prompt order, no manifest
    out = tmp_path / "cmp.json"
    code, _, err = run_cli(_compare(samples["A"], plain, "--prompts", str(samples["prompts"]), "--json",
                                    str(out), "--bootstrap", "50"), capsys)
    assert code == 0, err
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["b"]["prompts_from"].startswith("--prompts")
    assert any("--prompts ignored for --a" in w for w in rec["warnings"])
    entry = rec["metrics"]["clip_score"]
    # the same files scored in one pass: identical scores, so every prompt is a tie
    assert entry["wins"] == {"A": 0, "B": 0, "tie": 3} and entry["win_rate"]["value"] == 0.5
    assert entry["difference"]["value"] == 0.0
    assert entry["verdict"].startswith("no clear difference")


def _mismatched(samples: dict[str, Path], tmp_path: Path) -> Path:
    other = tmp_path / "B2"
    shutil.copytree(samples["B"], other)
    lines = (other / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[0])
    rec["prompt"] = "a purple star"
    lines[0] = json.dumps(rec)
    (other / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return other


@pytest.mark.parametrize("case", ["mismatched", "missing", "unknown", "not-per-image", "no-prompts",
                                  "unreadable"])
def test_bad_input_is_one_line_and_nothing_written(case: str, samples: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, page = tmp_path / "o.json", tmp_path / "o.html"
    a, b = samples["A"], samples["B"]
    metrics = "clip"
    if case == "mismatched":
        b = _mismatched(samples, tmp_path)
        words: tuple[str, ...] = ("not generated from the same prompts", "'a purple star'", "only in --b")
    elif case == "missing":
        b = tmp_path / "nowhere"
        words = ("--b", "does not exist")
    elif case == "unknown":
        metrics, words = "clip,nope", ("unknown metric 'nope'", "clip")
    elif case == "not-per-image":
        metrics, words = "fid", ("fid is not a per-image score",)
    elif case == "unreadable":  # both images of one prompt are damaged: that prompt is gone from B
        b = tmp_path / "B3"
        shutil.copytree(samples["B"], b)
        for line in (b / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec["prompt"] == "a red circle":
                (b / rec["file"]).write_bytes(b"not a png")
        words = ("only in --a ('a red circle')", "2 unreadable image(s) were left out first")
    else:
        b = tmp_path / "plain"
        shutil.copytree(samples["B"] / "images", b)
        words = ("--b", "no manifest.jsonl", "--prompts")
    # a CLIP model that does not exist: every error must come before any model is loaded
    argv = ["compare", "--a", str(a), "--b", str(b), "--metrics", metrics, "--clip-model",
            str(tmp_path / "no-clip"), "--offline", "--device", "cpu", "--json", str(out), "--report",
            str(page)]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *words)
    assert not out.exists() and not page.exists()


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel in PickScore's layout (save_pretrained with its processor), as
    tests/test_metric_pickscore.py builds it."""
    import math

    import torch

    from difflens.tiny_encoders import build_tiny_clip

    out = tmp_path_factory.mktemp("pickscore") / "model"
    model, processor = build_tiny_clip(seed=3, image_size=64)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out


def test_a_per_image_metric_through_the_route_keeps_a_and_b_apart(
        samples: dict[str, Path], tiny_pickscore: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """pickscore runs once over A's then B's images; each side's per-prompt means equal what difflens metrics
    reports for that folder alone (the metric's own per-prompt table), so no row went to the wrong side."""
    out = tmp_path / "cmp.json"
    argv = _compare(samples["A"], samples["B"], "--json", str(out), "--bootstrap", "100", "--pickscore-model",
                    str(tiny_pickscore), "--metrics", "clip,pickscore")  # the last --metrics wins
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert list(rec["metrics"]) == ["clip_score", "pickscore"]
    assert rec["settings"]["metrics"] == ["clip", "pickscore"]
    assert rec["settings"]["metric_options"]["pickscore"]["model"] == str(tiny_pickscore)
    assert rec["metrics"]["pickscore"]["verdict"] in stdout
    fingerprints = [fp for layers in rec["protocol"]["pickscore"].values() for fp in layers.values()]
    assert fingerprints and all(fp["weights_sha256"] for fp in fingerprints)
    rows = {r["prompt"]: r for r in rec["per_prompt"]["pickscore"]}
    for side, col in (("A", "mean_a"), ("B", "mean_b")):
        single = tmp_path / f"{side}.json"
        code, _, err = run_cli(["metrics", "--fake", str(samples[side]), "--metrics", "pickscore",
                                "--pickscore-model", str(tiny_pickscore), "--offline", "--device", "cpu",
                                "--json", str(single)], capsys)
        assert code == 0, err
        own = json.loads(single.read_text(encoding="utf-8"))["metrics"]["pickscore"]["per_prompt"]
        assert set(own) == set(rows)
        # the same model on the same images, in other batches: float32 noise only (scores are ~100 * cos)
        for prompt, entry in own.items():
            assert rows[prompt][col] == pytest.approx(entry["mean"], rel=1e-5, abs=1e-4), (side, prompt)
    spread = [r["mean_a"] for r in rows.values()] + [r["mean_b"] for r in rows.values()]
    assert np.ptp(spread) > 0.1  # the random model does tell the images apart
