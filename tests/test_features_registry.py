"""The features package: the extractor registry (built-in names, a user's network), the one Fingerprint,
and the one extraction loop (each image decoded once for every extractor, streaming sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from difflens.errors import DifflensError
from difflens.features.base import ExtractorBase, Fingerprint, check_compatible


class ColorStats(ExtractorBase):
    """A user's network: per-image channel means and standard deviations of [0, 1] pixels."""

    layers = ("mean", "std")

    def __init__(self, scale: float = 1.0, device: str = "cpu") -> None:
        self.name = "color-stats"
        self.scale = scale
        self.device = device
        self.calls: list[int] = []

    def preprocessing(self) -> dict[str, Any]:
        return {"scale": f"x/255*{self.scale}"}

    def fingerprint(self, layer: str) -> Fingerprint:
        from difflens.features.base import canonical_preprocessing

        self.check_layer(layer)
        return Fingerprint(protocol="identity", weights_sha256="none", extractor=self.name,
                           feature_layer=layer, preprocessing=canonical_preprocessing(self.preprocessing()))

    def forward(self, prepared: Any) -> dict[str, Any]:
        self.calls.append(len(prepared))
        x = np.stack(prepared).astype(np.float32) / 255.0 * self.scale
        return {"mean": x.mean(axis=(1, 2)), "std": x.std(axis=(1, 2))}


class Brightness(ExtractorBase):
    """A second extractor with a per-image ``prepare`` step (run in the loop's reader threads)."""

    name = "brightness"
    layers = ("value",)
    needs_prepare = True

    def preprocessing(self) -> dict[str, Any]:
        return {"grey": "mean over channels"}

    def fingerprint(self, layer: str) -> Fingerprint:
        return Fingerprint(protocol="grey", weights_sha256="none", extractor=self.name, feature_layer=layer)

    def prepare(self, image: Any) -> Any:
        return image.astype(np.float64).mean(axis=2)

    def forward(self, prepared: Any) -> dict[str, Any]:
        return {"value": np.asarray([p.mean() for p in prepared], dtype=np.float32)[:, None]}


@pytest.fixture
def registered() -> Any:
    from difflens.features.registry import register_extractor, unregister_extractor

    register_extractor("color-stats", ColorStats)
    yield
    unregister_extractor("color-stats")


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _folder(tmp_path: Path, images: np.ndarray) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


# ------------------------------------------------------------------------------------------- registry


def test_register_extractor_with_a_user_network(registered: Any) -> None:
    from difflens.features import get_extractor
    from difflens.features.extract import extract
    from difflens.features.registry import extractor_names

    assert "color-stats" in extractor_names()
    ext = get_extractor("color-stats", scale=2.0)
    assert isinstance(ext, ColorStats) and ext.scale == 2.0
    imgs = _images(7)
    out = extract(imgs, {ext.name: ext}, batch_size=3)
    expect = imgs.astype(np.float32) / 255.0 * 2.0
    # the same float32 operations on the same pixels, batch by batch: equal up to float32 summation order
    np.testing.assert_allclose(out.features[("color-stats", "mean")], expect.mean(axis=(1, 2)), rtol=1e-6)
    assert ext.calls == [3, 3, 1]  # batches of batch_size readable images, in source order
    assert out.kept == list(range(7))
    assert ext.fingerprint("mean").to_dict()["preprocessing"] == '{"scale":"x/255*2.0"}'


def test_registry_refuses_bad_registrations_and_names(registered: Any) -> None:
    from difflens.features.registry import get_extractor, register_extractor

    with pytest.raises(DifflensError, match="built in"):
        register_extractor("inception", ColorStats)
    with pytest.raises(DifflensError, match="already registered"):
        register_extractor("color-stats", ColorStats)
    register_extractor("color-stats", ColorStats, overwrite=True)
    with pytest.raises(DifflensError, match="not valid"):
        register_extractor("My Net", ColorStats)
    with pytest.raises(DifflensError, match="unknown extractor 'nope'"):
        get_extractor("nope")
    with pytest.raises(DifflensError, match="takes no model id"):
        get_extractor("inception:foo")
    register_extractor("broken", lambda: object())
    try:
        with pytest.raises(DifflensError, match="lacks"):
            get_extractor("broken")
    finally:
        from difflens.features.registry import unregister_extractor

        unregister_extractor("broken")


def test_builtin_names_resolve_lazily() -> None:
    """Every built-in name maps to an importable factory; naming one loads no torch until it is built."""
    import importlib

    from difflens.features.registry import _BUILTIN, split_name

    assert split_name("clip:openai/clip-vit-base-patch32") == ("clip", "openai/clip-vit-base-patch32")
    assert split_name("DINOv2") == ("dinov2", None)
    for target, _ in _BUILTIN.values():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func))


# ---------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_mismatch_is_refused_including_reference_preprocessing() -> None:
    base = Fingerprint(protocol="tf-legacy", weights_sha256="a" * 64)
    at256 = base.with_reference({"size": 256}).to_dict()
    at512 = base.with_reference({"size": 512}).to_dict()
    as_stored = base.with_reference(None).to_dict()
    assert "reference_preprocess" not in base.to_dict()  # the dict difflens always wrote, unchanged
    with pytest.raises(DifflensError, match=r"reference_preprocess: size 256 != size 512"):
        check_compatible(at256, at512, "--real a.npz", "--fake b.npz", False, [])
    with pytest.raises(DifflensError, match="reference_preprocess"):
        check_compatible(as_stored, at256, "--real a.npz", "--fake b.npz", False, [])
    warnings: list[str] = []
    check_compatible(at256, at512, "a", "b", True, warnings)
    assert len(warnings) == 1 and "not meaningful" in warnings[0]
    check_compatible(base.to_dict(), at256, "a", "b", False, [])  # images extracted directly: not recorded
    # a user's extractor: its preprocessing is compared too
    a = ColorStats(1.0).fingerprint("mean").to_dict()
    b = ColorStats(2.0).fingerprint("mean").to_dict()
    with pytest.raises(DifflensError, match="preprocessing"):
        check_compatible(a, b, "a", "b", False, [])
    # the stored form round-trips, "recorded as None" included
    for d in (at256, as_stored, base.to_dict(), a):
        assert Fingerprint.from_dict(d).to_dict() == d
    assert Fingerprint.from_dict(at256).key() != Fingerprint.from_dict(at512).key()


def test_metrics_fingerprint_import_path_is_the_same_class() -> None:
    from difflens.metrics.fingerprint import Fingerprint as Old

    assert Old is Fingerprint
    with pytest.raises(DifflensError, match="unknown resize protocol"):
        Fingerprint(protocol="bilinear", weights_sha256="a")


# --------------------------------------------------------------------------------------------- the loop


def test_each_image_is_decoded_once_for_two_extractors(tmp_path: Path, monkeypatch: Any) -> None:
    from difflens.features.extract import extract
    from difflens.metrics import images as image_rule
    from difflens.metrics.sources import resolve_source

    imgs = _images(9, seed=1)
    folder = _folder(tmp_path, imgs)
    (folder / "004b.png").write_bytes(b"not a png")  # unreadable: skipped once, for both extractors
    decoded: list[str] = []
    real_read = image_rule.read_image

    def counting(path: Any) -> Any:
        decoded.append(Path(path).name)
        return real_read(path)

    monkeypatch.setattr(image_rule, "read_image", counting)
    a, b = ColorStats(), Brightness()
    out = extract(resolve_source(folder, "--real"), {a.name: a, b.name: b}, batch_size=4, workers=2)
    assert sorted(decoded) == sorted(p.name for p in folder.iterdir())  # every file decoded exactly once
    assert len(out.log.skipped) == 1 and out.log.skipped[0][0].endswith("004b.png")
    assert out.n == 9
    np.testing.assert_allclose(out.features[("brightness", "value")][:, 0],
                               imgs.astype(np.float64).mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(out.features[("color-stats", "mean")],
                               (imgs.astype(np.float32) / 255.0).mean(axis=(1, 2)), rtol=1e-6)


def test_sources_stream_alike_arrays_tensors_and_lists() -> None:
    """A uint8 array, a uint8 (N, 3, H, W) torch tensor, a list of arrays and a generator give the same
    features through the loop (the same pixels in the same batches: bit-identical)."""
    import torch

    from difflens.features.extract import extract

    imgs = _images(11, seed=2)
    ext = ColorStats()
    ref = extract(imgs, {"c": ext}, batch_size=4).features[("c", "mean")]
    tensor = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    for source in (tensor, list(imgs), (im for im in imgs)):
        got = extract(source, {"c": ext}, batch_size=4).features[("c", "mean")]
        assert np.array_equal(got, ref)
    with pytest.raises(DifflensError, match=r"uint8 \(N, 3, H, W\)"):
        extract(tensor.float(), {"c": ext})


def test_strict_and_too_few_images(tmp_path: Path) -> None:
    from difflens.features.extract import extract

    folder = _folder(tmp_path, _images(1))
    (folder / "bad.png").write_bytes(b"x")
    files = sorted(folder.iterdir())
    with pytest.raises(DifflensError, match="cannot read image"):
        extract(files, {"c": ColorStats()}, strict=True)
    with pytest.raises(DifflensError, match="only 1 readable image"):
        extract(files, {"c": ColorStats()}, min_images=2)


def test_a_parquet_dataset_streams_through_the_loop(tmp_path: Path) -> None:
    """``--real <parquet>`` is read as a stream (never one array): the loop gives the features of the
    decoded rows, and a torchrun-style slice reads only its rows."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from difflens.features.extract import extract
    from difflens.metrics.evaluate import DatasetOptions, resolve_reference

    imgs = _images(10, size=12, seed=3)
    cells = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(cells, type=image_type)})
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    src, identity, _ = resolve_reference(str(path), DatasetOptions(), offline=True, strict=False)
    assert src.kind == "images" and not isinstance(src.images, np.ndarray)
    assert src.images.shape == (10, 12, 12, 3) and identity is not None
    out = extract(src, {"c": ColorStats()}, batch_size=4)
    ref = extract(imgs, {"c": ColorStats()}, batch_size=4)
    assert np.array_equal(out.features[("c", "mean")], ref.features[("c", "mean")])
    part = extract(src.images[3:7], {"c": ColorStats()}, batch_size=4)
    assert np.array_equal(part.features[("c", "mean")], ref.features[("c", "mean")][3:7])


def test_embedding_metrics_decode_each_image_once_for_clip_score_cmmd_and_fd_dinov2(
        tmp_path: Path, monkeypatch: Any) -> None:
    """CLIP score, CMMD and FD-DINOv2 on the same folders: one pass per image set feeds the three
    extractors, so every file is decoded once, and the values equal the ones computed metric by metric
    (the same batches through the same networks: bit-identical)."""
    from difflens.features.clip import PROTOCOL_CMMD, ClipEncoder
    from difflens.features.dinov2 import Dinov2Encoder
    from difflens.metrics import images as image_rule
    from difflens.metrics.clip import compute_clip_score
    from difflens.metrics.cmmd import cmmd_from_embeddings
    from difflens.metrics.dinov2 import fd_from_features
    from difflens.metrics.embedding import compute_embedding_metrics
    from difflens.tiny_encoders import save_tiny_clip, save_tiny_dinov2

    clip_dir, dino_dir = save_tiny_clip(tmp_path / "clip"), save_tiny_dinov2(tmp_path / "dinov2")
    (tmp_path / "f").mkdir()
    (tmp_path / "r").mkdir()
    fake = sorted(_folder(tmp_path / "f", _images(5, size=24, seed=4)).iterdir())
    real = sorted(_folder(tmp_path / "r", _images(6, size=24, seed=5)).iterdir())
    decoded: list[str] = []
    real_read = image_rule.read_image

    def counting(path: Any) -> Any:
        decoded.append(str(path))
        return real_read(path)

    monkeypatch.setattr(image_rule, "read_image", counting)
    out = compute_embedding_metrics(["clip", "cmmd", "fd-dinov2"], fake=fake, real=real,
                                    prompts=["a red cat"] * len(fake), clip_model=str(clip_dir),
                                    cmmd_clip_model=str(clip_dir), dinov2_model=str(dino_dir), batch_size=4,
                                    device="cpu", offline=True)
    assert sorted(decoded) == sorted(str(p) for p in [*fake, *real])
    monkeypatch.setattr(image_rule, "read_image", real_read)
    clip = ClipEncoder.load(str(clip_dir), device="cpu", offline=True)
    dino = Dinov2Encoder.load(str(dino_dir), device="cpu", offline=True)
    x = clip.encode_images(real, PROTOCOL_CMMD, 4, False)
    y = clip.encode_images(fake, PROTOCOL_CMMD, 4, False)
    assert out["metrics"]["cmmd"]["value"] == cmmd_from_embeddings(x, y).to_dict()["value"]
    fd = fd_from_features(dino.encode_images(real, 4, False), dino.encode_images(fake, 4, False))
    assert out["metrics"]["fd_dinov2"]["value"] == fd
    alone = compute_clip_score(fake, ["a red cat"] * len(fake), encoder=clip, batch_size=4)
    assert out["metrics"]["clip_score"]["value"] == alone.value
