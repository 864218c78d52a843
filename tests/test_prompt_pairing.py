"""Prompts pair with any image folder: a `manifest.jsonl` with only `file` and `prompt` (images made
elsewhere, e.g. DALL-E), Hugging Face style `metadata.jsonl`/`metadata.csv` (`file_name` + caption column);
a line that cannot be read is an error naming the file and line (exit 2, one line, nothing written, before
any model loads), except the torn last line an interrupted `generate` run leaves, which is a warning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error as _assert_one_line_error
from cli_helpers import run_cli as _run
from difflens.errors import DifflensError
from difflens.generate.pairs import read_paired_folder

PROMPTS = ["a photo of a cat", "a red car", "a dog in the snow", "a house"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from difflens.tiny_encoders import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("enc") / "clip")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLENS_CACHE_DIR", str(tmp_path / "cache"))


def _images(folder: Path, n: int = 4, sub: str = "") -> list[str]:
    """n distinct small images (random noise, seeded); returns their names relative to ``folder``."""
    rng = np.random.default_rng(0)
    (folder / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{sub}img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def _write_jsonl(path: Path, rows: list[dict], trailing_newline: bool = True) -> None:
    text = "\n".join(json.dumps(r) for r in rows)
    path.write_text(text + ("\n" if trailing_newline else ""), encoding="utf-8")




def _make_folder(root: Path, kind: str) -> tuple[Path, list[str], list[str]]:
    """A folder whose pairing file lists the images in an order unlike their sorted order (so a pairing
    that fell back to sorted file order with cycled prompts would give other pairs)."""
    folder = root / kind.replace(".", "_")
    names = _images(folder, sub="pics/")
    order = [2, 0, 3, 1]
    files = [names[i] for i in order]
    prompts = [PROMPTS[i] for i in range(4)]
    if kind == "manifest.jsonl":  # exactly the documented keys a DALL-E export can fill: file + prompt
        _write_jsonl(folder / kind, [{"file": f, "prompt": p} for f, p in zip(files, prompts, strict=True)])
    elif kind == "metadata.jsonl":  # Hugging Face imagefolder: file_name + text
        rows = [{"file_name": f, "text": p} for f, p in zip(files, prompts, strict=True)]
        _write_jsonl(folder / kind, rows)
    else:
        with open(folder / kind, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file_name", "caption"])
            w.writerows(zip(files, prompts, strict=True))
    return folder, files, prompts


@pytest.mark.parametrize("kind", ["manifest.jsonl", "metadata.jsonl", "metadata.csv"])
def test_folder_with_pairing_file_gives_clip_score_of_the_listed_pairs(
        kind: str, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from difflens.metrics.clip import compute_clip_score

    folder, files, prompts = _make_folder(tmp_path, kind)
    out = tmp_path / "m.json"
    code, _, err = _run(["metrics", "--fake", str(folder), "--metrics", "clip", "--clip-model", str(clip_dir),
                         "--per-prompt", "--offline", "--device", "cpu", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["metrics"]["clip_score"]["n"] == 4
    # the reference: the same encoder on the listed (file, prompt) pairs. Same weights, same images, same
    # preprocessing; the tolerance only absorbs float32 rounding of a different batch composition.
    direct = compute_clip_score([folder / f for f in files], prompts, clip_model=str(clip_dir), device="cpu")
    assert res["metrics"]["clip_score"]["value"] == pytest.approx(direct.value, rel=1e-5, abs=1e-4)
    per = {p["prompt"]: p["clip_score"] for p in res["per_prompt"]["prompts"]}
    for prompt, score in zip(prompts, direct.per_sample, strict=True):
        assert per[prompt] == pytest.approx(float(score), rel=1e-5, abs=1e-4)
    # the pairs matter: the other pairing (sorted files with these prompts) scores differently
    sorted_pairs = compute_clip_score(sorted(folder / f for f in files), prompts, clip_model=str(clip_dir),
                                      device="cpu")
    assert not np.allclose(sorted_pairs.per_sample, direct.per_sample, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("lines, needle", [
    (['{"file": "img_0.png", "prompt": "a cat"}', '{"file": "img_1.png", "prompt": '],
     "line 2 is not valid JSON"),
    (['{"file": "img_0.png", "prompt": "a cat"}', '["img_1.png", "a dog"]'], "line 2 is a JSON list"),
    (['{"file": "img_0.png", "prompt": "a cat"}', '{"file": "img_1.png"}'], "line 2 has no 'prompt' key"),
    (['{"file": "img_0.png", "prompt": "a cat"}', '{"prompt": "a dog"}'], "line 2 names no image"),
    (['{"file": "img_0.png", "prompt": "a cat"}', '', '{"file": "nope.png", "prompt": "x"}'],
     "line 3: image file"),
    (['{"file": "img_0.png", "prompt": "  "}'], "line 1: the 'prompt' text is empty"),
    (['{"file": "img_0.png", "prompt": "a cat", "flags": "nan"}'], "line 1: 'flags' is not a list"),
    (['{"file": "img_0.png", "description": "a cat"}'], "line 1 has no caption column"),
])
def test_unreadable_manifest_line_is_an_error_naming_file_and_line(tmp_path: Path, lines: list[str],
                                                                    needle: str) -> None:
    _images(tmp_path, 2)
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DifflensError, match=r"manifest\.jsonl") as exc:
        read_paired_folder(tmp_path)
    assert needle in str(exc.value)


@pytest.mark.parametrize("rows, needle", [
    ("file_name,text\nimg_0.png,a cat\nimg_1.png,a dog,extra\n", "line 3 has more fields than the header"),
    ("file_name,text\nimg_0.png\n", "line 2 has fewer fields than the header"),
    ("file_name,text\nimg_0.png,a cat\nmissing.png,a dog\n", "line 3: image file"),
])
def test_unreadable_csv_row_is_an_error_naming_the_line(tmp_path: Path, rows: str, needle: str) -> None:
    _images(tmp_path, 2)
    (tmp_path / "metadata.csv").write_text(rows, encoding="utf-8")
    with pytest.raises(DifflensError, match=r"metadata\.csv") as exc:
        read_paired_folder(tmp_path)
    assert needle in str(exc.value)


def test_malformed_line_through_the_cli_exits_2_before_any_model_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dalle"
    names = _images(folder, 3)
    text = "\n".join([json.dumps({"file": names[0], "prompt": "a cat"}), "{oops",
                      json.dumps({"file": names[2], "prompt": "a car"})]) + "\n"
    (folder / "manifest.jsonl").write_text(text, encoding="utf-8")
    out = tmp_path / "m.json"
    # a CLIP model that does not exist: the manifest is read (and refused) before any model is looked up
    code, stdout, err = _run(["metrics", "--fake", str(folder), "--metrics", "clip", "--clip-model",
                              str(tmp_path / "no-such-clip"), "--offline", "--json", str(out)], capsys)
    _assert_one_line_error(code, err, str(folder / "manifest.jsonl"), "line 2", "fix")
    assert not out.exists() and stdout == ""


def test_generate_folder_torn_last_line_is_a_warning_elsewhere_an_error(tmp_path: Path) -> None:
    from difflens.generate.manifest import read_manifest

    rows = [{"index": i, "prompt": PROMPTS[i], "seed": i, "file": f"images/{i:06d}.png", "model": "m",
             "scheduler": "s", "steps": 2, "guidance": 1.0, "height": 36, "width": 44} for i in range(3)]
    for name in ("gen", "foreign"):
        folder = tmp_path / name
        (folder / "images").mkdir(parents=True)
        for r in rows:
            Image.new("RGB", (44, 36), (r["index"] * 40, 0, 0)).save(folder / r["file"])
        torn = json.dumps(rows[2])[:25]  # a kill while appending the third line
        text = "".join(json.dumps(r) + "\n" for r in rows[:2]) + torn
        (folder / "manifest.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "gen" / "generation.json").write_text("{}", encoding="utf-8")

    paired = read_paired_folder(tmp_path / "gen")  # written by generate: the unfinished sample is left out
    assert [p.name for p in paired.files] == ["000000.png", "000001.png"]
    assert paired.prompts == PROMPTS[:2]
    assert any("last line is incomplete" in w and "rerun" in w for w in paired.warnings())
    with pytest.raises(DifflensError, match="line 3 is not valid JSON"):
        read_paired_folder(tmp_path / "foreign")  # nobody's resume logic covers it: an error
    # generate's own resume logic still sees the torn line and drops it (then rewrites the manifest)
    entries, bad = read_manifest(tmp_path / "gen")
    assert sorted(entries) == [0, 1] and bad == 1


def test_optional_keys_index_flags_and_unlisted_images(tmp_path: Path) -> None:
    names = _images(tmp_path, 4)
    rows = [{"index": 2, "file": names[2], "prompt": "two"},
            {"index": 0, "file": names[0], "prompt": "zero (old)"},
            {"index": 1, "file": names[1], "prompt": "one", "flags": ["black"]},
            {"index": 0, "file": names[0], "prompt": "zero"}]  # a rerun's line for index 0: the last wins
    # a last line without its newline that parses is complete (many scripts write files this way)
    _write_jsonl(tmp_path / "manifest.jsonl", rows, trailing_newline=False)
    paired = read_paired_folder(tmp_path)
    assert paired.prompts == ["zero", "two"] and paired.flagged == 1
    assert [p.name for p in paired.files] == [names[0], names[2]]
    warnings = " ".join(paired.warnings())
    assert "1 image file(s) not listed in manifest.jsonl" in warnings and names[3] in warnings
    assert "flagged" in warnings
    assert read_paired_folder(tmp_path, num_samples=1).prompts == ["zero"]


def test_caption_column_precedence_and_override(tmp_path: Path) -> None:
    names = _images(tmp_path, 2)
    rows = [{"file_name": n, "caption": f"caption {i}", "text": f"text {i}", "prompt": f"prompt {i}",
             "alt": f"alt {i}"} for i, n in enumerate(names)]
    _write_jsonl(tmp_path / "metadata.jsonl", rows)
    assert read_paired_folder(tmp_path).prompts == ["prompt 0", "prompt 1"]
    assert read_paired_folder(tmp_path, "alt").prompts == ["alt 0", "alt 1"]
    for r in rows:
        del r["prompt"]
    _write_jsonl(tmp_path / "metadata.jsonl", rows)
    paired = read_paired_folder(tmp_path)
    assert paired.prompts == ["text 0", "text 1"] and paired.caption_column == "text"
    with pytest.raises(DifflensError, match="no caption column 'nope'"):
        read_paired_folder(tmp_path, "nope")


def test_prompts_flag_with_a_paired_folder_is_reported_not_silently_used(
        clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, _ = _make_folder(tmp_path, "manifest.jsonl")
    prompts = tmp_path / "p.txt"
    prompts.write_text("something else\n", encoding="utf-8")
    out = tmp_path / "m.json"
    code, _, err = _run(["metrics", "--fake", str(folder), "--metrics", "clip", "--clip-model", str(clip_dir),
                         "--prompts", str(prompts), "--offline", "--device", "cpu", "--json", str(out)],
                        capsys)
    assert code == 0, err
    assert any("--prompts ignored" in w for w in json.loads(out.read_text())["warnings"])
