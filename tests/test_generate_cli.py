"""``difflens generate`` bad input: one clear line, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from difflens.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    return int(exc.value.code or 0), err


def _base(model: Path | str, prompts: Path, out: Path, n: str = "2") -> list[str]:
    return ["generate", "--model", str(model), "--prompts", str(prompts), "--num-samples", n,
            "--out", str(out), "--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("a photo of a cat\n", encoding="utf-8")
    return p


def _assert_clean_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err


def test_empty_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    out = tmp_path / "out"
    code, err = _run(_base("unused", empty, out), capsys)
    _assert_clean_error(code, err, "holds no prompt")
    assert not out.exists()


def test_bad_numbers_and_unknown_flag(tmp_path: Path, prompts: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, err = _run(_base("unused", prompts, out, n="0"), capsys)
    _assert_clean_error(code, err, "--num-samples must be at least 1")
    code, err = _run([*_base("unused", prompts, out), "--batch-size", "0"], capsys)
    _assert_clean_error(code, err, "--batch-size must be at least 1")
    code, err = _run([*_base("unused", prompts, out), "--no-such-flag"], capsys)
    assert code == 2 and "No such option" in err
    assert not out.exists()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"not ours")
    code, err = _run(_base("unused", prompts, foreign), capsys)
    _assert_clean_error(code, err, "not empty and was not made by difflens generate")
    assert [p.name for p in foreign.iterdir()] == ["holiday.png"]


def test_model_not_loadable_offline(tmp_path: Path, prompts: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, err = _run([*_base("difflens-test/no-such-model", prompts, out), "--offline"], capsys)
    _assert_clean_error(code, err, "could not load model")
    assert not out.exists()


def test_not_a_text_to_image_pipeline(tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str],
                                      tiny_pipeline_dir: Callable[[str], Path]) -> None:
    model = tmp_path / "img2img"
    shutil.copytree(tiny_pipeline_dir("sd15"), model)
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionImg2ImgPipeline"
    (model / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    code, err = _run(_base(model, prompts, out), capsys)
    _assert_clean_error(code, err, "not a text-to-image pipeline")
    assert not out.exists()


def test_size_not_multiple_and_different_settings_refused(
        tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str],
        tiny_pipeline_dir: Callable[[str], Path]) -> None:
    model = tiny_pipeline_dir("sdxl")
    out = tmp_path / "out"
    code, err = _run([*_base(model, prompts, out), "--height", "33"], capsys)
    _assert_clean_error(code, err, "not a multiple of")
    assert not out.exists()

    code, err = _run(_base(model, prompts, out), capsys)
    assert code == 0, err
    assert "2/2 samples" in err
    manifest = (out / "manifest.jsonl").read_bytes()
    code, err = _run([*_base(model, prompts, out), "--guidance", "2.5"], capsys)
    _assert_clean_error(code, err, "other settings (guidance")
    assert (out / "manifest.jsonl").read_bytes() == manifest
