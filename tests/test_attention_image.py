"""Attention on a given image (`difflens attention --image IMG --noise-level L`), on tiny random pipelines
of every family, saved and loaded back with ``from_pretrained``: the generation route's invariants hold,
the noising is the schedulers' own forward process, levels do not interact, the maps at sigma = 1 equal the
generation route's first step, and every bad input exits 2 with one line and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from difflens.attention.given_image import (
    ImageAttentionConfig,
    level_table,
    noise_latent,
    parse_noise_levels,
    run_attention_on_image,
)
from difflens.cli import main
from difflens.errors import DifflensError
from difflens.models import load_pipeline

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "pixart")
T5 = ("sd3", "flux", "pixart")
PROMPT = "a photo of a cat and a dog"


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir: Callable[[str], Path]) -> Callable[[str], tuple[Any, Path]]:
    cache: dict[str, tuple[Any, Path]] = {}

    def get(family: str) -> tuple[Any, Path]:
        if family not in cache:
            path = tiny_pipeline_dir(family)
            cache[family] = (load_pipeline(path, "float32", "cpu", offline=True), path)
        return cache[family]

    return get


def _image(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _cfg(family: str, path: Path, **kw: Any) -> ImageAttentionConfig:
    base: dict[str, Any] = dict(model=str(path), prompt=PROMPT, image="given.png", noise_levels=(0.3, 0.8),
                                seed=5, max_sequence_length=32 if family in T5 else None)
    base.update(kw)
    return ImageAttentionConfig(**base)


@pytest.mark.parametrize("size", [(32, 32), (32, 16)], ids=["square", "nonsquare"])
@pytest.mark.parametrize("family", FAMILIES)
def test_invariants(family: str, size: tuple[int, int], pipes: Callable[[str], tuple[Any, Path]]) -> None:
    pipe, path = pipes(family)
    res = run_attention_on_image(_cfg(family, path, all_tokens=True), _image(*size), pipe)
    checks = {c["name"]: c for c in res.checks}
    for name in ("probabilities_sum_to_one", "fast_route_matches_softmax", "output_reproduced",
                 "token_ids_match", "map_shape_is_latent_grid", "one_call_per_level",
                 "prediction_unchanged_by_capture"):
        assert checks[name]["ok"], checks[name]["message"]
    agg, rec = res.aggregate, res.record
    latent = (size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor)
    n_tok = rec["text_sequence"]["length"]
    assert agg.per_step.shape == (2, n_tok, *latent)              # one map per noise level
    assert agg.per_step_index == [0, 1] and rec["steps_run"] == 2
    np.testing.assert_allclose(agg.maps, agg.per_step.mean(0), atol=1e-6)
    # Per level and pixel, over every text position: cross attention sums to 1; joint to the text mass.
    total = agg.per_step.sum(1)
    if rec["family"] in ("sd", "sdxl", "pixart"):
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        assert agg.text_mass is None
    else:
        np.testing.assert_allclose(total, agg.text_mass_per_step, atol=1e-5)
        assert float(agg.text_mass.min()) > 0.0 and float(agg.text_mass.max()) < 1.0
    assert [row["level"] for row in rec["noise_levels"]] == [0.3, 0.8]
    assert rec["noise_levels"][0]["log_snr"] > rec["noise_levels"][1]["log_snr"]
    assert rec["per_step_axis"] == "noise_level"


def test_levels_do_not_interact(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    """Each level is an independent denoiser pass: levels run together give each level's maps alone
    (same seeded eps; tolerance for float32 accumulation order in the aggregator)."""
    pipe, path = pipes("sd15")
    img = _image()
    both = run_attention_on_image(_cfg("sd15", path, noise_levels=(0.8, 0.3)), img, pipe)
    for k, level in enumerate((0.8, 0.3)):
        alone = run_attention_on_image(_cfg("sd15", path, noise_levels=(level,)), img, pipe)
        np.testing.assert_allclose(both.aggregate.per_step[k], alone.aggregate.per_step[0], atol=1e-6)
    # different levels see different inputs, so their maps differ
    assert not np.allclose(both.aggregate.per_step[0], both.aggregate.per_step[1], atol=1e-4)


def test_noising_is_the_schedulers_forward_process(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    gen = torch.Generator("cpu").manual_seed(0)
    z0, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    # VP: DDPMScheduler.add_noise at t = round(L (T - 1)), with the model's own alphas_cumprod
    pipe, _ = pipes("sd15")
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    for row in level_table(pipe, "sd", (0.05, 0.5, 1.0)):
        assert row["timestep"] == round(row["level"] * 999) and row["schedule"] == "vp"
        ref = ddpm.add_noise(z0, eps, torch.tensor([row["timestep"]]))
        torch.testing.assert_close(noise_latent(z0, eps, row), ref, atol=1e-6, rtol=1e-6)
    # Flow matching: scale_noise at sigma = L
    pipe3, _ = pipes("sd3")
    flow = FlowMatchEulerDiscreteScheduler(shift=1.0)
    for row in level_table(pipe3, "sd3", (0.25, 0.7)):
        flow.set_timesteps(sigmas=[row["level"]])
        ref = flow.scale_noise(z0, torch.tensor([row["model_timestep"]]), eps)
        torch.testing.assert_close(noise_latent(z0, eps, row), ref, atol=1e-6, rtol=1e-6)
    # The model's timestep input is sigma * T whatever the shift: the pipeline's own schedule pairs them so.
    pipe3.scheduler.set_timesteps(4)
    np.testing.assert_allclose(pipe3.scheduler.timesteps.numpy(), pipe3.scheduler.sigmas[:-1].numpy() * 1000,
                               rtol=1e-6)


def test_sigma_one_matches_generation_first_step(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    """At L = 1 a flow-matching model sees pure noise, which is what generation starts from: with the same
    seed and no guidance, the given-image maps equal the generation route's step-0 maps."""
    from difflens.attention.api import AttentionConfig, run_attention

    pipe, path = pipes("sd3")
    given = run_attention_on_image(_cfg("sd3", path, noise_levels=(1.0,), seed=11), _image(), pipe)
    generated = run_attention(AttentionConfig(model=str(path), prompt=PROMPT, steps=2, seed=11, height=32,
                                              width=32, guidance=1.0, max_sequence_length=32,
                                              image_check=False), pipe)
    assert generated.record["normalization"]["batch_sizes_seen"][0] == 1       # no CFG batch
    np.testing.assert_allclose(given.aggregate.per_step[0], generated.aggregate.per_step[0], atol=1e-6)


def test_parse_noise_levels() -> None:
    assert parse_noise_levels("0.3, 0.6 1") == (0.3, 0.6, 1.0)
    for bad, msg in (("0", "outside (0, 1]"), ("1.5", "outside (0, 1]"), ("nan", "outside"),
                     ("x", "not a number"), ("0.3,0.3", "twice"), ("", "no --noise-level")):
        with pytest.raises(DifflensError, match=msg.replace("(", r"\(").replace("]", r"\]")):
            parse_noise_levels(bad)


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_cli_writes_the_generation_outputs(tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray(_image(32, 24)).save(img)
    out = tmp_path / "att"
    code = _run(["attention", "--model", str(tiny_pipeline_dir("sd15")), "--prompt", "a red car on a street",
                 "--image", str(img), "--noise-level", "0.2,0.5", "--noise-level", "0.9",
                 "--words", "car,street", "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention.json", "attention.npz", "attention_maps.png",
                                                   "image.png"]
    rec = json.loads((out / "attention.json").read_text())
    assert [r["level"] for r in rec["noise_levels"]] == [0.2, 0.5, 0.9]
    assert rec["source"]["kind"] == "image" and len(rec["source"]["sha256"]) == 64
    assert all(c["ok"] for c in rec["checks"])
    with np.load(out / "attention.npz") as z:
        assert z["per_step"].shape == (3, 2, 16, 12) and z["word_maps"].shape == (2, 16, 12)
        assert list(z["words"]) == ["car", "street"]
    assert np.array_equal(np.asarray(Image.open(out / "image.png")), np.asarray(Image.open(img)))


BAD = {
    "size_not_multiple": (["--noise-level", "0.5"], (33, 32), "is not a multiple of 2"),
    "level_zero": (["--noise-level", "0"], (32, 32), "outside (0, 1]"),
    "level_above_one": (["--noise-level", "0.5,1.2"], (32, 32), "outside (0, 1]"),
    "level_not_number": (["--noise-level", "half"], (32, 32), "is not a number"),
    "no_level": ([], (32, 32), "--image needs --noise-level"),
    "steps_with_image": (["--noise-level", "0.5", "--steps", "5"], (32, 32), "--steps applies to generation"),
    "unreadable_image": (["--noise-level", "0.5"], None, "cannot read image"),
    "missing_image": (["--noise-level", "0.5"], "missing", "does not exist"),
    "word_not_in_prompt": (["--noise-level", "0.5", "--words", "zebra"], (32, 32),
                           "not a word of the prompt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(case: str, tiny_pipeline_dir: Callable[[str], Path],
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    extra, size, expected = BAD[case]
    img = tmp_path / "in.png"
    if isinstance(size, tuple):
        Image.fromarray(_image(*size)).save(img)
    elif size is None:
        img.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    code = _run(["attention", "--model", str(tiny_pipeline_dir("sd15")), "--prompt", "a photo of a cat",
                 "--image", str(img), "--device", "cpu", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not out.exists()


def test_noise_level_without_image_exits_2(tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(["attention", "--model", str(tiny_pipeline_dir("sd15")), "--prompt", "a cat",
                 "--noise-level", "0.5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--noise-level applies to a given image" in err and not (tmp_path / "o").exists()
