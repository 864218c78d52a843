"""`difflens attention` end to end on a tiny SD 1.x pipeline, and every bad input: exit 2, one clear line,
no traceback, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from difflens.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_cli_writes_all_outputs(tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path) -> None:
    model = tiny_pipeline_dir("sd15")
    out = tmp_path / "att"
    code = _run(["attention", "--model", str(model), "--prompt", "a red car on a street", "--steps", "3",
                 "--seed", "1", "--height", "32", "--width", "24", "--stride", "2", "--words", "car,street",
                 "--layers", "up_blocks", "--device", "cpu", "--guidance", "5", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention.json", "attention.npz", "attention_maps.png",
                                                   "image.png"]
    rec = json.loads((out / "attention.json").read_text())
    with np.load(out / "attention.npz") as z:
        maps, per_step, tokens = z["maps"], z["per_step"], z["tokens"]
    steps_run = rec["steps_run"]            # PNDM runs one step more than asked
    assert maps.shape == (2, 16, 12)
    assert per_step.shape == (len(range(0, steps_run, 2)), 2, 16, 12)
    assert list(tokens) == ["car</w>", "street</w>"]
    assert [(t["index"], t["text"], t["word"]) for t in rec["tokens"]] == [(0, "car</w>", "car"),
                                                                         (1, "street</w>", "street")]
    assert all(la["name"].startswith("up_blocks") for la in rec["layers"]) and rec["layers"]
    assert set(rec["entropy_per_step"]["words"]) == {"car", "street"}
    assert len(rec["entropy_per_step"]["words"]["car"]) == steps_run
    assert "softmax" in rec["normalization"]
    names = {c["name"]: c["ok"] for c in rec["checks"]}
    assert names == {"probabilities_sum_to_one": True, "fast_route_matches_softmax": True,
                     "output_reproduced": True,
                     "image_unchanged_by_capture": True, "token_ids_match": True,
                     "map_shape_is_latent_grid": True, "step_alignment": True}
    assert rec["generator"] == 'torch.Generator("cpu").manual_seed(1)'


@pytest.fixture(scope="module")
def no_cross_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unconditional DDPM pipeline: self-attention only, no text."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    path = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(str(path))
    return path


BAD = {
    "no_cross_attention": ([], "no cross- or joint-attention layer"),
    "word_not_in_prompt": (["--words", "zebra"], "'zebra' is not a word of the prompt"),
    "layers_match_nothing": (["--layers", "nothing_here*"], "matches none of the"),
    "prompt_too_long": (["--prompt", " ".join(["cat"] * 80)], "would truncate"),
    "over_budget": (["--max-memory-mb", "0.01"], "over the budget"),
    "bad_size": (["--height", "33"], "not a multiple of"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(case: str, tiny_pipeline_dir: Callable[[str], Path],
                                              no_cross_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    extra, expected = BAD[case]
    model = no_cross_model if case == "no_cross_attention" else tiny_pipeline_dir("sd15")
    out = tmp_path / "out"
    argv = ["attention", "--model", str(model), "--prompt", "a photo of a cat", "--steps", "2",
            "--height", "32", "--width", "32", "--out", str(out), *extra]
    code = _run(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert err.count("error:") == 1
    assert not out.exists()
    if case == "over_budget":
        assert "MiB" in err and "--stride" in err
