"""Resumable generation on tiny SD 1.x, SDXL, SD3 and Flux pipelines saved to disk and loaded back through
``DiffusionPipeline.from_pretrained``: generate -> crash/kill mid-run -> rerun gives exactly N valid,
distinct, regenerable samples; other settings into the same folder are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.generate.api import generate
from difflens.generate.manifest import MANIFEST_NAME, SETTINGS_NAME, read_samples
from difflens.generate.sampling import regenerate
from difflens.generate.seeds import sample_seed
from difflens.testing import FAULT_ENV

PROMPTS = ["a photo of a cat", "a red car on the street", "a dog in the snow"]
N = 5
COMMON = dict(steps=2, height=32, width=32, seed=7)


def _prompt_file(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return p


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB" and im.format == "PNG"
        return np.asarray(im)


def _check_folder(out: Path, n: int, seed: int) -> list[np.ndarray]:
    """Exactly n finished samples, indices 0..n-1, one manifest line each, valid PNGs, prompts cycled."""
    lines = [json.loads(x) for x in (out / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()]
    assert sorted(e["index"] for e in lines) == list(range(n))  # none lost, none duplicated
    entries = read_samples(out)
    assert [e.index for e in entries] == list(range(n))
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == n
    assert not [p for p in (out / "images").iterdir() if p.suffix != ".png"]  # no temp files left
    images = []
    for e in entries:
        assert e.prompt == PROMPTS[e.index % len(PROMPTS)]
        assert e.seed == sample_seed(seed, e.index)
        img = _png(out / e.file)
        assert img.shape == (32, 32, 3)
        images.append(img)
    for i in range(n):
        for j in range(i + 1, n):
            assert not np.array_equal(images[i], images[j]), (i, j)
    return images


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux"])
def test_crash_then_resume_gives_n_valid_distinct_regenerable_samples(
        family: str, tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from difflens.models import load_pipeline

    model = tiny_pipeline_dir(family)
    prompts = _prompt_file(tmp_path)
    out = tmp_path / "samples"
    pipe = load_pipeline(model, device="cpu")

    monkeypatch.setenv(FAULT_ENV, "crash:2")
    with pytest.raises(RuntimeError, match="injected fault"):
        generate(model, prompts, N, out, batch_size=1, pipe=pipe, **COMMON)
    monkeypatch.delenv(FAULT_ENV)
    assert len(read_samples(out)) == 2

    # resume at another batch size: allowed (the batch size does not pick a sample's noise)
    report = generate(model, prompts, N, out, batch_size=2, pipe=pipe, **COMMON)
    assert (report.finished, report.generated, report.resumed) == (N, N - 2, 2)
    assert report.flagged_count() == 0
    images = _check_folder(out, N, seed=7)

    entries = read_samples(out)
    assert [e.batch_size for e in entries] == [1, 1, 2, 2, 1]
    fresh = load_pipeline(model, device="cpu")  # a fresh load, as a user regenerating later would do
    # Bit for bit (uint8 PNGs): the same saved weights loaded the same way, the same batch size and one
    # thread (conftest) give the same kernels on the same inputs; a regeneration is exact or it is wrong.
    # 1: made alone before the crash; 4: made alone after the resume (short last batch). The plain
    # single call pipe(prompt, ..., generator=Generator("cpu").manual_seed(seed)) reproduces them exactly.
    for i in (1, 4):
        assert np.array_equal(regenerate(fresh, entries[i], alone=True), images[i]), i
    # 2: made in a batch of 2; a call of the recorded batch size reproduces it exactly
    assert np.array_equal(regenerate(fresh, entries[2]), images[2])

    # a rerun of the finished run generates nothing
    again = generate(model, prompts, N, out, batch_size=2, pipe=pipe, **COMMON)
    assert again.generated == 0 and again.finished == N

    # other settings into the same folder are refused, nothing is touched
    before = (out / MANIFEST_NAME).read_bytes()
    with pytest.raises(DifflensError, match="other settings"):
        generate(model, prompts, N, out, pipe=pipe, **{**COMMON, "steps": 3})
    with pytest.raises(DifflensError, match="prompts_digest"):
        generate(model, ["a different prompt"], N, out, pipe=pipe, **COMMON)
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_sigkill_between_png_and_manifest_line_then_cli_resume(
        tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """A real SIGKILL of the CLI process after a PNG is in place but before its manifest line."""
    from difflens.cli import main
    from difflens.models import load_pipeline

    model = tiny_pipeline_dir("sd15")
    prompts = _prompt_file(tmp_path)
    out = tmp_path / "samples"
    args = ["generate", "--model", str(model), "--prompts", str(prompts), "--num-samples", "4", "--out",
            str(out), "--steps", "2", "--height", "32", "--width", "32", "--seed", "3", "--batch-size", "1",
            "--device", "cpu"]
    env = {**os.environ, FAULT_ENV: "killpng:2"}
    proc = subprocess.run([sys.executable, "-m", "difflens", *args], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(read_samples(out)) == 2
    assert (out / "images" / "000002.png").is_file()  # the orphan PNG, no manifest line

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    _check_folder(out, 4, seed=3)
    pipe = load_pipeline(model, device="cpu")
    entry = read_samples(out)[2]
    assert np.array_equal(regenerate(pipe, entry, alone=True), _png(out / entry.file))


def test_disk_full_stops_cleanly_and_resumes(tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from difflens.models import load_pipeline

    model = tiny_pipeline_dir("sdxl")
    pipe = load_pipeline(model, device="cpu")
    out = tmp_path / "samples"
    monkeypatch.setenv(FAULT_ENV, "enospc:2")
    with pytest.raises(DifflensError, match="disk is full") as exc:
        generate(model, PROMPTS, 4, out, batch_size=3, pipe=pipe, **COMMON)
    assert "2 of 4 samples are finished" in str(exc.value)
    assert "rerun the same command" in str(exc.value)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    monkeypatch.delenv(FAULT_ENV)
    report = generate(model, PROMPTS, 4, out, batch_size=3, pipe=pipe, **COMMON)
    assert report.finished == 4 and report.generated == 2
    assert (out / SETTINGS_NAME).is_file() and (out / "summary.json").is_file()


def test_nan_and_black_images_are_flagged_and_long_prompts_counted(
        tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path) -> None:
    import torch

    from difflens.models import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir("sd15"), device="cpu")

    def poison(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[0] = float("nan")  # a float16 overflow
        output[1] = -1.0  # decodes to an all-black image
        return output

    handle = pipe.vae.decoder.register_forward_hook(poison)
    long_prompt = " ".join(["cat"] * 100)
    try:
        report = generate("tiny-sd15", ["a photo of a cat", long_prompt], 3, tmp_path / "s", batch_size=3,
                          pipe=pipe, **COMMON)
    finally:
        handle.remove()
    assert report.flagged["nan"] == [0] and report.flagged["black"] == [1]
    assert report.truncation.prompts == 1 and report.truncation.samples == 1
    assert report.truncation.limits["tokenizer"] == 77
    assert [e.index for e in read_samples(tmp_path / "s")] == [2]  # flagged samples stay out of metrics
    assert len(read_samples(tmp_path / "s", include_flagged=True)) == 3
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["flagged"]["nan"]["count"] == 1 and summary["valid"] == 1
    assert summary["truncated_prompts"]["prompts"] == 1
