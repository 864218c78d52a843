"""Image reading rules, source resolution, fingerprints and Inception weights lookup (no network pass)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflens.errors import DifflensError
from difflens.features import inception as inception_net
from difflens.features import inception_weights as inc
from difflens.metrics.fingerprint import Fingerprint, check_compatible
from difflens.metrics.images import (
    ReadLog,
    iter_folder_images,
    list_image_files,
    read_image,
    to_rgb_uint8,
)
from difflens.metrics.sources import resolve_source

# ---------------------------------------------------------------------------------------------- images


def _png16(path: Path, arr: np.ndarray) -> None:
    """Write a 16-bit RGB/RGBA PNG by hand (PIL cannot write them)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 200, 30
    rgba[0, 0, 3] = 0  # fully transparent: compositing on white would give (255, 255, 255)
    rgba[1, 1, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert (out == np.array([10, 200, 30], dtype=np.uint8)).all()
    la = np.stack([np.full((2, 2), 77, np.uint8), np.zeros((2, 2), np.uint8)], axis=2)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 77).all()


def test_palette_is_looked_up(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    img.putdata([0, 1, 2])
    img.info["transparency"] = 1  # a transparent palette entry keeps its colour too
    img.save(tmp_path / "p.png", transparency=1)
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_16bit_grayscale_keeps_high_byte(tmp_path: Path) -> None:
    vals = np.array([[0, 255, 256, 511, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()
    # mode I (32-bit) is taken as 16-bit data, clipped
    arr32 = np.array([[-5, 65535, 70000]], dtype=np.int32)
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(arr32, mode="I"))[0, :, 1], [0, 255, 255])


def test_16bit_colour_keeps_high_byte(tmp_path: Path) -> None:
    rgb = np.array([[[0, 255, 256], [65535, 32768, 511]]], dtype=np.uint16)
    _png16(tmp_path / "c16.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), (rgb >> 8).astype(np.uint8))
    rgba = np.concatenate([rgb, np.zeros((1, 2, 1), np.uint16)], axis=2)
    _png16(tmp_path / "c16a.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "c16a.png"), (rgb >> 8).astype(np.uint8))


def test_bilevel_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1").save(tmp_path / "b.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "b.bmp")[0], [[0, 0, 0], [255, 255, 255]])
    cmyk = Image.new("CMYK", (4, 4), (10, 20, 30, 40))
    cmyk.save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "c.jpg"), expected)


def test_8bit_rule_matches_torch_fidelity_loader(tmp_path: Path) -> None:
    from torch_fidelity.datasets import ImagesPathDataset

    rng = np.random.default_rng(0)
    files = []
    for mode, ch in (("RGB", 3), ("RGBA", 4), ("L", 1)):
        arr = rng.integers(0, 256, (5, 6, ch), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if ch == 1 else arr, mode=mode)
        files.append(tmp_path / f"{mode}.png")
        img.save(files[-1])
    pal = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).convert("P")
    files.append(tmp_path / "P.png")
    pal.save(files[-1])
    ds = ImagesPathDataset([str(f) for f in files])
    for i, f in enumerate(files):
        np.testing.assert_array_equal(read_image(f), ds[i].permute(1, 2, 0).numpy())


def test_folder_listing_recursive_sorted_filtered(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("z.PNG", "a.jpg", "b/deep/c.JPeG", "b/x.webp", "b/y.bmp", ".hidden/h.png", ".dot.png"):
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
        img.save(tmp_path / rel, format=fmt[Path(rel).suffix.lower()])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b" / "img.gif").write_bytes(b"")  # not an image extension of difflens
    (tmp_path / "b" / "img.tiff").write_bytes(b"")  # TIFF is listed (every mode reads it); read later
    rel = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert rel == ["a.jpg", "b/deep/c.JPeG", "b/img.tiff", "b/x.webp", "b/y.bmp", "z.PNG"]


def test_corrupt_files_skipped_or_strict(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:30])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    log = ReadLog()
    out = list(iter_folder_images([good, trunc, junk], log))
    assert len(out) == 1 and [Path(p).name for p, _ in log.skipped] == ["trunc.png", "junk.jpg"]
    assert "2 unreadable" in log.warnings("--real")[0]
    with pytest.raises(DifflensError, match=r"junk\.jpg"):
        list(iter_folder_images([good, junk], ReadLog(), strict=True))


# --------------------------------------------------------------------------------------------- sources


def test_sources_every_kind(tmp_path: Path) -> None:
    from difflens.metrics.stats import GaussianStats, save_stats

    imgs = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    Image.fromarray(imgs[0]).save(tmp_path / "one.png")
    (tmp_path / "f").mkdir()
    Image.fromarray(imgs[1]).save(tmp_path / "f" / "x.png")
    np.save(tmp_path / "imgs.npy", imgs)
    np.savez(tmp_path / "imgs.npz", images=imgs, other=np.zeros(2))
    np.savez(tmp_path / "single.npz", imgs)
    feats = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)
    np.save(tmp_path / "feats.npy", feats)
    np.savez(tmp_path / "feats.npz", features=feats, logits=np.zeros((6, 10), np.float32))
    np.savez(tmp_path / "ptfid.npz", mu=np.zeros(5), sigma=np.eye(5))
    fp = Fingerprint(protocol="tf-legacy", weights_sha256="ab" * 32).to_dict()
    save_stats(tmp_path / "dl.npz", GaussianStats.from_features(feats), fp)

    kinds = {
        "f": ("folder", 1), "one.png": ("folder", 1), "imgs.npy": ("images", 3), "imgs.npz": ("images", 3),
        "single.npz": ("images", 3), "feats.npy": ("features", 6), "feats.npz": ("features", 6),
        "ptfid.npz": ("stats", -1), "dl.npz": ("stats", 6),
    }
    for name, (kind, n) in kinds.items():
        src = resolve_source(str(tmp_path / name), "--real")
        assert (src.kind, src.n) == (kind, n), name
    assert resolve_source(str(tmp_path / "ptfid.npz"), "--real").fingerprint is None
    assert resolve_source(str(tmp_path / "dl.npz"), "--real").fingerprint == fp
    assert resolve_source(str(tmp_path / "feats.npz"), "--real").logits.shape == (6, 10)
    forced = resolve_source(str(tmp_path / "feats.npy"), "--real-features", want_features=True)
    assert forced.kind == "features"
    # in-memory inputs
    assert resolve_source(imgs, "real").kind == "images"
    assert resolve_source(feats, "real").kind == "features"
    assert resolve_source(GaussianStats.from_features(feats), "real").kind == "stats"
    assert resolve_source({"mu": np.zeros(5), "sigma": np.eye(5), "n": 10}, "real").n == 10
    assert resolve_source([tmp_path / "one.png", tmp_path / "f" / "x.png"], "real").n == 2


@pytest.mark.parametrize(("make", "match"), [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no image files"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 4, 4, 3), np.float32)) or d / "x.npy", "uint8"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 3, 4, 4), np.uint8)) or d / "x.npy", r"\(N, H, W, 3\)"),
    (lambda d: np.savez(d / "x.npz", a=np.zeros(2), b=np.zeros(3)) or d / "x.npz", "expected 'mu'"),
    (lambda d: (d / "x.txt").write_text("hi") and d / "x.txt", "unknown kind"),
    (lambda d: np.save(d / "x.npy", np.array([[1.0, np.nan]])) or d / "x.npy", "NaN"),
])
def test_source_errors(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(DifflensError, match=match):
        resolve_source(str(make(tmp_path)), "--real")


# ---------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_compatibility() -> None:
    a = Fingerprint(protocol="tf-legacy", weights_sha256="a" * 64).to_dict()
    b = Fingerprint(protocol="clean", weights_sha256="a" * 64).to_dict()
    c = dict(a, difflens_version="9.9")  # the version is recorded, not compared
    warnings: list[str] = []
    check_compatible(a, c, "x", "y", False, warnings)
    check_compatible(a, None, "x", "y", False, warnings)
    assert warnings == []
    with pytest.raises(DifflensError, match=r"different protocols.*protocol: 'tf-legacy' != 'clean'"):
        check_compatible(a, b, "x", "y", False, warnings)
    check_compatible(a, b, "x", "y", True, warnings)
    assert len(warnings) == 1 and "--allow-protocol-mismatch" in warnings[0]
    with pytest.raises(DifflensError, match="unknown resize protocol"):
        Fingerprint(protocol="bilinear", weights_sha256="a")


# ------------------------------------------------------------------------------------- weights lookup


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No weights anywhere: an empty torch hub dir and no $DIFFLENS_WEIGHTS_DIR."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(inc.WEIGHTS_DIR_ENV, raising=False)
    return tmp_path


def test_missing_weights_offline_says_what_to_put_where(clean_env: Path) -> None:
    with pytest.raises(DifflensError) as err:
        inc.resolve_inception_weights(offline=True)
    msg = str(err.value)
    assert inc.WEIGHTS_FILENAME in msg and inc.KNOWN_SHA256 in msg
    assert str(clean_env / "torch-home" / "hub" / "checkpoints") in msg
    assert "\n" not in msg


def test_hf_hub_offline_env_blocks_download(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("download attempted while offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DifflensError, match="not found offline"):
        inc.resolve_inception_weights()


def test_failed_download_is_one_clear_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    calls = []

    def fail(url, dst, **k):
        calls.append(url)
        Path(dst).write_bytes(b"partial")
        raise OSError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DIFFLENS_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(DifflensError, match="could not download"):
        inc.resolve_inception_weights()
    assert calls == [inc.WEIGHTS_URL]
    assert not (clean_env / "torch-home" / "hub" / "checkpoints" / inc.WEIGHTS_FILENAME).exists()


def test_lookup_order_and_digest_check(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = clean_env / "weights"
    env_dir.mkdir()
    hub = clean_env / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    good = b"pretend these are the published weights"
    monkeypatch.setattr(inc, "KNOWN_SHA256", __import__("hashlib").sha256(good).hexdigest())
    (hub / inc.PT_FID_FILENAME).write_bytes(good)
    w = inc.resolve_inception_weights(offline=True)
    assert (w.path, w.source, w.standard) == (hub / inc.PT_FID_FILENAME, "torch hub cache", True)
    monkeypatch.setenv(inc.WEIGHTS_DIR_ENV, str(env_dir))
    (env_dir / inc.WEIGHTS_FILENAME).write_bytes(good)
    w = inc.resolve_inception_weights(offline=True)
    assert (w.path, w.source) == (env_dir / inc.WEIGHTS_FILENAME, "$DIFFLENS_WEIGHTS_DIR")
    # a file under a standard name with another digest is refused
    (env_dir / inc.WEIGHTS_FILENAME).write_bytes(b"truncated")
    with pytest.raises(DifflensError, match="SHA-256"):
        inc.resolve_inception_weights(offline=True)
    # an explicit file wins over everything and may be any file (recorded by digest, flagged non-standard)
    other = clean_env / "mine.pth"
    other.write_bytes(b"other")
    w = inc.resolve_inception_weights(other, offline=True)
    assert (w.source, w.standard, w.random_init) == ("--inception-weights", False, False)
    assert w.warning() and "not the published" in w.warning()
    with pytest.raises(DifflensError, match="does not exist"):
        inc.resolve_inception_weights(clean_env / "nope.pth")


def test_random_weights_match_torch_fidelity_format(tmp_path: Path) -> None:
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inc.make_random_inception_weights(tmp_path / "w.pth", seed=3)
    sd = torch.load(path, weights_only=True)
    ref = inc._Skeleton.build().state_dict()
    assert list(sd) == list(ref)
    assert all(sd[k].shape == ref[k].shape and sd[k].dtype == ref[k].dtype for k in ref)
    FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(path))  # strict load
    w = inc.resolve_inception_weights(path)
    assert w.random_init and w.warning().startswith("RANDOM-INIT")
    assert json.loads((tmp_path / ("w.pth" + inc.RANDOM_SIDECAR_SUFFIX)).read_text())["seed"] == 3


def test_resizes_match_references() -> None:
    import torch
    from cleanfid.resize import make_resizer
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    rng = np.random.default_rng(0)
    for shape in ((2, 3, 32, 48), (1, 3, 299, 299), (1, 3, 400, 350)):
        x = torch.from_numpy(rng.integers(0, 256, shape).astype(np.float32))
        ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert torch.equal(inception_net.tf_resize(x), ref)
    clean = make_resizer("PIL", False, "bicubic", (299, 299))
    for hw in ((32, 48), (512, 300)):
        img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        np.testing.assert_array_equal(inception_net.clean_resize(img), clean(img))
