"""One set of image rules in every mode: one extension list (TIFF included), one rule for unreadable or
oversized images (skipped and listed as a warning, `--strict`: an error), the same in `metrics` and in
`latent encode`/`latent ood`; latent flags named as everywhere else (`--height/--width`, no short flags)."""

from __future__ import annotations

import csv
import json
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error
from cli_helpers import run_cli as run
from difflens.metrics.images import IMAGE_EXTENSIONS, ImageReadError, ReadLog, iter_folder_images, read_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid PNG header claiming width x height RGB pixels, with a few bytes of data (a decompression
    bomb's shape: tiny file, huge image)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def _smooth(folder: Path, n: int, seed: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.uniform(0.35, 0.65, 3) + rng.normal(0, 0.03, (32, 32, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{prefix}{i:02d}.png")




def test_one_extension_list_and_tiff_in_both_modes(tmp_path: Path) -> None:
    from difflens.latent import images as latent_images
    from difflens.latent.images import list_images
    from difflens.metrics.images import list_image_files

    assert latent_images.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".bmp"} == set(IMAGE_EXTENSIONS)
    arr = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    for name in ("a.tif", "b.TIFF", "c.png", "d.jpg"):
        Image.fromarray(arr).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert [p.name for p in list_image_files(tmp_path)] == [p.name for p in list_images([tmp_path])] == \
        ["a.tif", "b.TIFF", "c.png", "d.jpg"]
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), arr)  # lossless TIFF reads back exactly


@pytest.mark.parametrize("side", [20000, 10000])  # over twice PIL's limit (open refuses), and over once
def test_oversized_header_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    path = huge_png(tmp_path / "huge.png", side, side)
    assert path.stat().st_size < 200
    # the filters in force, recording what passes them: PIL's own DecompressionBombWarning must not
    with warnings.catch_warnings(record=True) as caught, \
            pytest.raises(ImageReadError, match="over the limit of 89,478,485 pixels"):
        read_image(path)
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]
    # the metrics' folder reader skips it and lists it as a warning; --strict makes it an error
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    log = ReadLog()
    assert len(list(iter_folder_images([tmp_path / "huge.png", tmp_path / "ok.png"], log))) == 1
    assert "skipped 1 unreadable image file(s)" in log.warnings("--fake")[0]
    from difflens.errors import DifflensError

    with pytest.raises(DifflensError, match="cannot read image"):
        list(iter_folder_images([tmp_path / "huge.png"], ReadLog(), strict=True))


def test_latent_encode_skips_oversized_image_with_the_metrics_warning(
        tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    _smooth(folder, 3, 0, "a")
    huge = huge_png(folder / "zz_huge.png")
    out = tmp_path / "lat.npz"
    code, _, err = run(["latent", "encode", str(folder), "--model", str(tiny_pipeline_dir("sd15")),
                        "--height", "32", "--width", "32", "--out", str(out)], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "skipped 1 unreadable image file(s)" in err and "zz_huge.png" in err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["size"] == 32 and len(report["images"]) == 3
    assert [s["file"] for s in report["skipped"]] == [str(huge)]
    assert "over the limit" in report["skipped"][0]["reason"]
    # the same text the metrics' reader gives for the same file
    log = ReadLog()
    list(iter_folder_images([huge], log))
    assert log.warnings("images") == report["warnings"]
    with np.load(out) as data:
        assert data["latents"].shape[0] == 3 and "zz_huge" not in " ".join(data["files"].tolist())


def test_latent_encode_strict_refuses_before_loading_the_model(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    _smooth(folder, 2, 0, "a")
    huge_png(folder / "zz_huge.png")
    out = tmp_path / "lat.npz"
    # a model that does not exist: never reached, the images are checked first
    code, _, err = run(["latent", "encode", str(folder), "--model", str(tmp_path / "no-such-model"),
                        "--strict", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "zz_huge.png", "over the limit", "Fix:")
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_latent_ood_skips_oversized_images_in_every_set(tiny_pipeline_dir: Callable[[str], Path],
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ref, test = tmp_path / "ref", tmp_path / "test"
    _smooth(ref, 6, 1, "r")
    _smooth(test, 3, 2, "t")
    huge_png(ref / "huge_ref.png")
    huge_png(test / "huge_test.png", 12000, 9000)
    out = tmp_path / "ood"
    code, _, err = run(["latent", "ood", "--model", str(tiny_pipeline_dir("sd15")), "--reference", str(ref),
                        "--test", str(test), "--method", "all", "--noise-levels", "0.5", "--steps", "2",
                        "--min-reference", "2", "--size", "32", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads((out / "ood.json").read_text())
    assert result["n_reference"] == 6 and result["n_test"] == 3
    assert set(result["methods"]) == {"latent-zscore", "mahalanobis", "reconstruction"}  # --method all
    joined = " ".join(result["warnings"])
    assert "--reference: skipped 1" in joined and "--test: skipped 1" in joined
    assert {Path(s["file"]).name for s in result["skipped"]} == {"huge_ref.png", "huge_test.png"}
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["file"]).name for r in rows] == ["t00.png", "t01.png", "t02.png"]


def test_latent_flags_match_the_other_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    _smooth(folder, 1, 0, "a")
    base = ["latent", "encode", str(folder), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.npz")]
    code, _, err = run([*base, "--height", "32", "--width", "64"], capsys)
    assert_one_line_error(code, err, "square", "--height 32", "--width 64")
    code, _, err = run([*base, "--height", "32", "--size", "64"], capsys)
    assert_one_line_error(code, err, "square", "--size 64")
    for short in (["-m", "x"], ["-o", "y.npz"]):  # no short flags besides -h
        code, _, err = run(["latent", "encode", str(folder), *short], capsys)
        assert code == 2 and "No such option" in err, err
    for cmd in ("encode", "interpolate", "direction", "ood"):
        code, out, _ = run(["latent", cmd, "--help"], capsys)
        assert code == 0 and "--height" in out and "--width" in out and "--size" in out


def test_embedding_metrics_skip_oversized_images_with_their_prompts(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIP score follows the same rule: the unreadable image and its prompt leave together (`--strict`: an
    error naming the file, before any model loads)."""
    from difflens.metrics.clip import compute_clip_score
    from difflens.tiny_encoders import save_tiny_clip

    monkeypatch.setenv("DIFFLENS_CACHE_DIR", str(tmp_path / "cache"))
    clip = save_tiny_clip(tmp_path / "clip")
    folder = tmp_path / "fake"
    _smooth(folder, 3, 4, "g")
    huge_png(folder / "g99.png")
    prompts = {"g00.png": "a cat", "g01.png": "a red car", "g99.png": "a huge thing", "g02.png": "a house"}
    (folder / "manifest.jsonl").write_text("".join(json.dumps({"file": f, "prompt": p}) + "\n"
                                                   for f, p in prompts.items()), encoding="utf-8")
    out = tmp_path / "m.json"
    argv = ["metrics", "--fake", str(folder), "--metrics", "clip", "--clip-model", str(clip), "--offline",
            "--device", "cpu", "--json", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["metrics"]["clip_score"]["n"] == 3
    assert any("skipped 1 unreadable image file(s)" in w and "g99.png" in w for w in res["warnings"])
    kept = [f for f in prompts if f != "g99.png"]
    direct = compute_clip_score([folder / f for f in kept], [prompts[f] for f in kept], clip_model=str(clip),
                                device="cpu")
    # same encoder, images and prompts: only float32 rounding of another batch composition can differ
    assert res["metrics"]["clip_score"]["value"] == pytest.approx(direct.value, rel=1e-5, abs=1e-4)
    out.unlink()
    code, _, err = run([*argv[:-4], "--clip-model", str(tmp_path / "no-such-clip"), "--strict", "--json",
                        str(out)], capsys)
    assert_one_line_error(code, err, "g99.png", "over the limit")
    assert not out.exists()
