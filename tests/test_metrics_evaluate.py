"""`difflens metrics` end to end: generate from a model then evaluate (Inception + CLIP score with the
per-prompt breakdown), and a reference set named as a dataset file (issues 3 and 9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from difflens.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from difflens.demo.sample_images import natural_crops, write_folder
    from difflens.metrics.inception import make_random_inception_weights
    from difflens.tiny_encoders import save_tiny_clip

    root = tmp_path_factory.mktemp("evaluate")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car\na blue house\n")
    return {"real": write_folder(natural_crops(10, 32, seed=3), root / "real"),
            "weights": make_random_inception_weights(root / "inception.pth"),
            "clip": save_tiny_clip(root / "clip"), "prompts": prompts, "root": root}


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_generate_then_evaluate_with_clip_breakdown(assets: dict[str, Path], tiny_pipeline_dir) -> None:
    from difflens.generate.manifest import read_samples
    from difflens.metrics.api import compute_metrics

    out = assets["root"] / "result.json"
    samples = assets["root"] / "samples"
    code = _run(["metrics", "--model", str(tiny_pipeline_dir("sd15")), "--prompts", str(assets["prompts"]),
                 "--num-samples", "6", "--samples-dir", str(samples), "--steps", "2", "--height", "32",
                 "--width", "32", "--real", str(assets["real"]), "--metrics", "fid,kid,clip",
                 "--kid-subset-size", "4", "--clip-model", str(assets["clip"]), "--per-prompt",
                 "--inception-weights", str(assets["weights"]), "--device", "cpu", "--offline",
                 "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    entries = read_samples(samples)
    assert len(entries) == 6
    assert set(result["metrics"]) == {"fid", "kid", "clip_score"}
    # the Inception numbers are those of the generated folder
    direct = compute_metrics(assets["real"], [samples / e.file for e in entries], "fid",
                             inception_weights=assets["weights"], device="cpu", show_progress=False)
    assert result["metrics"]["fid"]["value"] == pytest.approx(direct["metrics"]["fid"]["value"], rel=1e-9)
    rows = result["per_prompt"]["prompts"]
    assert sorted(r["prompt"] for r in rows) == ["a blue house", "a photo of a cat", "a red car"]
    assert [r["count"] for r in rows] == [2, 2, 2]
    # 6 samples of 3 prompts, 2 each: the plain mean of the per-prompt scores is the overall score
    overall = result["metrics"]["clip_score"]["value"]
    assert np.mean([r["clip_score"] for r in rows]) == pytest.approx(overall, rel=1e-9)


def test_reference_set_from_a_parquet_dataset(assets: dict[str, Path]) -> None:
    from difflens.refsets.demo_data import write_caption_dataset

    data = write_caption_dataset(assets["root"] / "dataset", n=12, height=32, width=32)
    out_folder, out_parquet = assets["root"] / "folder.json", assets["root"] / "parquet.json"
    common = ["--fake", str(assets["real"]), "--metrics", "fid", "--inception-weights",
              str(assets["weights"]), "--device", "cpu", "--offline"]
    assert _run(["metrics", "--real", str(data.folder), *common, "--json", str(out_folder)]) == 0
    assert _run(["metrics", "--real", str(data.parquet), *common, "--json", str(out_parquet)]) == 0
    a, b = json.loads(out_folder.read_text()), json.loads(out_parquet.read_text())
    assert a["metrics"]["fid"]["value"] == pytest.approx(b["metrics"]["fid"]["value"], rel=1e-9)
    assert b["datasets"]["real"]["identity"]


def test_model_without_num_samples_is_a_clear_error(assets: dict[str, Path], capsys) -> None:
    code = _run(["metrics", "--model", "some/model", "--prompts", str(assets["prompts"]),
                 "--real", str(assets["real"])])
    assert code == 2
    err = capsys.readouterr().err
    assert "--num-samples" in err and "Traceback" not in err
