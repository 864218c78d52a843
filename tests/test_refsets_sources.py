"""Reference sets read from datasets: the same rows from every layout, reproducible subsets, preprocessing,
a cached hub dataset offline, and bad inputs (clear messages, nothing written)."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.stats import GaussianStats
from difflens.refsets.dataset_source import load_prompts_from_dataset, open_image_source
from difflens.refsets.dataset_spec import is_dataset_spec
from difflens.refsets.demo_data import CaptionDataset, write_caption_dataset
from difflens.refsets.preprocess import ReferencePreprocess, resize_center_crop
from difflens.refsets.subset import draw_subset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> CaptionDataset:
    return write_caption_dataset(tmp_path_factory.mktemp("refdata"), n=24)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``datasets`` cache for this test (the library reads the path at call time)."""
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def _pixel_features(images: np.ndarray) -> np.ndarray:
    """A simple deterministic feature: 4x4 average-pooled pixels (float64)."""
    n, h, w, c = images.shape
    x = images.astype(np.float64)[:, : h // 4 * 4, : w // 4 * 4]
    return x.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)).reshape(n, -1)


def _read_all(spec: str, **kw: object) -> tuple[np.ndarray, object]:
    src = open_image_source(spec, **kw)  # type: ignore[arg-type]
    batches = list(src.iter_batches(5))
    return np.concatenate(batches), src


def _layouts(data: CaptionDataset) -> dict[str, str]:
    return {"folder": str(data.folder), "parquet": str(data.parquet), "arrow": str(data.arrow),
            "imagefolder": str(data.imagefolder), "arrow_dict": f"{data.arrow_dict}:train"}


def test_same_images_same_statistics_in_every_layout(data: CaptionDataset) -> None:
    ref_stats = GaussianStats.from_features(_pixel_features(data.images))
    digests = set()
    for kind, spec in _layouts(data).items():
        images, src = _read_all(spec)
        assert images.dtype == np.uint8 and images.shape == data.images.shape, kind
        assert np.array_equal(images, data.images), kind
        stats = GaussianStats.from_features(_pixel_features(images))
        assert stats.n == ref_stats.n
        assert np.array_equal(stats.mean, ref_stats.mean) and np.array_equal(stats.m2, ref_stats.m2), kind
        digests.add(src.report()["pixels_sha256"])
        assert src.identity["kind"] == ("arrow" if kind == "arrow_dict" else kind)
    assert len(digests) == 1
    # is_dataset_spec: datasets yes, a plain image folder no (the metrics' folder reader handles it)
    assert all(is_dataset_spec(s) for k, s in _layouts(data).items() if k != "folder")
    assert not is_dataset_spec(str(data.folder))
    assert is_dataset_spec("hf:someone/some-set:validation")
    assert not is_dataset_spec(str(data.root / "missing.npz"))


def test_subset_and_preprocessing_agree_across_layouts(data: CaptionDataset) -> None:
    expected_rows = draw_subset(24, 10, seed=3).indices
    prep = ReferencePreprocess(16)
    expected = np.stack([prep.apply_array(data.images[r]) for r in expected_rows])
    for kind, spec in _layouts(data).items():
        images, src = _read_all(spec, num=10, subset_seed=3, reference_size=16)
        assert images.shape == (10, 16, 16, 3), kind
        assert np.array_equal(src.rows, expected_rows), kind
        assert np.array_equal(images, expected), kind
        sub = src.identity["subset"]
        assert sub["seed"] == 3 and sub["num"] == 10 and sub["total"] == 24
        assert sub["indices_sha256"] == draw_subset(24, 10, seed=3).digest
        assert src.preprocessing["reference_preprocess"]["size"] == 16


def test_subset_reproducible_and_seed_dependent() -> None:
    a = draw_subset(1000, 100, seed=7)
    b = draw_subset(1000, 100, seed=7)
    c = draw_subset(1000, 100, seed=8)
    assert np.array_equal(a.indices, b.indices) and a.digest == b.digest
    assert not np.array_equal(a.indices, c.indices) and a.digest != c.digest
    assert len(set(a.indices.tolist())) == 100 and np.all(np.diff(a.indices) > 0)
    assert a.indices.max() > 500  # not simply the first rows
    # nested: a larger subset with the same seed contains the smaller one
    assert set(a.indices.tolist()) <= set(draw_subset(1000, 300, seed=7).indices.tolist())
    # the chunked path (more rows than one chunk) equals a one-shot ranking of all keys
    from difflens.refsets.subset import subset_keys

    big = draw_subset(5_000_000, 50, seed=1)
    keys = subset_keys(np.arange(5_000_000), 1)
    assert np.array_equal(big.indices, np.sort(np.argsort(keys)[:50]))
    assert draw_subset(10, None).to_dict()["scheme"] == "all"
    with pytest.raises(DifflensError, match="more rows than the dataset has"):
        draw_subset(10, 11)


def test_preprocess_matches_torchvision_resize_center_crop() -> None:
    import torchvision.transforms as T
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w, size in ((37, 53, 16), (64, 31, 24), (20, 20, 32), (101, 77, 48), (33, 47, 33)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        tv = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
        ours = np.asarray(resize_center_crop(img, size))
        assert ours.shape == (size, size, 3)
        assert np.array_equal(ours, np.asarray(tv(img))), (h, w, size)
    with pytest.raises(DifflensError, match="out of range"):
        ReferencePreprocess(2)


def test_captions_prompts_and_caption_lists(data: CaptionDataset) -> None:
    src = open_image_source(str(data.parquet), caption_column="caption", num=6, subset_seed=1)
    assert src.captions == [data.captions[r] for r in src.rows]
    prompts = load_prompts_from_dataset(str(data.arrow), "caption", num=6, subset_seed=1)
    assert prompts == src.captions
    # a column holding lists of captions gives the first caption of each row
    assert load_prompts_from_dataset(str(data.arrow), "captions", num=6, subset_seed=1) == prompts
    assert load_prompts_from_dataset(str(data.imagefolder), "caption") == data.captions


def _fake_hub_cache(cache: Path, parquet: Path, name: str = "testuser/tinyset") -> None:
    """Lay out ``cache`` as ``datasets`` leaves a hub dataset it has downloaded and prepared:
    ``<owner>___<name>/<config>/<version>/<commit>/`` with the Arrow files and dataset_info.json."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    from difflens.refsets.hf_datasets import datasets_env

    short = name.split("/")[1]
    with datasets_env(offline=True):
        builder = Parquet(cache_dir=str(cache / "tmp"), dataset_name=short,
                          data_files={"train": [str(parquet)], "validation": [str(parquet)]})
        builder.download_and_prepare()
    src = Path(glob.glob(str(cache / "tmp" / short / "*" / "0.0.0"))[0])
    dst = cache / name.replace("/", "___") / "default" / "0.0.0" / ("ab" * 20)
    dst.parent.mkdir(parents=True)
    shutil.move(str(src), dst)
    shutil.rmtree(cache / "tmp")


def test_cached_hub_dataset_offline_and_streaming(data: CaptionDataset, hf_cache: Path) -> None:
    _fake_hub_cache(hf_cache, data.parquet)
    images, src = _read_all("hf:testuser/tinyset:validation", offline=True, num=9, subset_seed=5,
                            caption_column="caption")
    rows = draw_subset(24, 9, seed=5).indices
    assert np.array_equal(images, data.images[rows])
    assert src.captions == [data.captions[r] for r in rows]
    ident = src.identity
    assert (ident["kind"], ident["name"], ident["config"], ident["split"]) == \
        ("hf", "testuser/tinyset", "default", "validation")
    assert ident["revision"] == "ab" * 20
    streamed, ssrc = _read_all("hf:testuser/tinyset:default:validation", offline=True, num=9, subset_seed=5,
                               streaming=True)
    assert np.array_equal(streamed, images)
    assert ssrc.identity["subset"] == ident["subset"]
    with pytest.raises(DifflensError, match=r"no split 'test'; available splits: train, validation"):
        open_image_source("hf:testuser/tinyset:default:test", offline=True)
    # the library's global offline switch is not left on while a reading generator is suspended
    import datasets

    before = datasets.config.HF_HUB_OFFLINE
    reading = open_image_source("hf:testuser/tinyset:validation", offline=True, streaming=True).iter_images()
    next(reading)
    assert before == datasets.config.HF_HUB_OFFLINE
    reading.close()
    with pytest.raises(DifflensError, match="several splits"):
        open_image_source("hf:testuser/tinyset", offline=True)


def test_hub_dataset_offline_not_cached_names_the_cache_path(hf_cache: Path) -> None:
    with pytest.raises(DifflensError) as exc:
        open_image_source("hf:nobody/not-downloaded:validation", offline=True)
    msg = str(exc.value)
    assert "not in the local cache" in msg and "--offline" in msg
    assert str(hf_cache / "nobody___not-downloaded") in msg
    assert "HF_DATASETS_CACHE" in msg


def test_bad_columns_splits_and_specs(data: CaptionDataset) -> None:
    with pytest.raises(DifflensError, match=r"no image column 'img'; available columns: image, caption, "
                                            r"captions, id"):
        open_image_source(str(data.parquet), image_column="img")
    with pytest.raises(DifflensError, match=r"no caption column 'text'; available columns"):
        open_image_source(str(data.arrow), caption_column="text")
    with pytest.raises(DifflensError, match=r"no split 'test'; available splits: train, validation"):
        open_image_source(f"{data.arrow_dict}:test")
    with pytest.raises(DifflensError, match="several splits"):
        open_image_source(str(data.arrow_dict))
    with pytest.raises(DifflensError, match=r"holds .*not images"):
        open_image_source(str(data.arrow), image_column="id")
    with pytest.raises(DifflensError, match="not a valid dataset spec"):
        open_image_source("hf:bad name!")
    with pytest.raises(DifflensError, match="does not exist"):
        open_image_source(str(data.root / "nope.parquet"))
    with pytest.raises(DifflensError, match="more rows than the dataset has"):
        open_image_source(str(data.arrow), num=25)
    assert len(open_image_source(f"{data.arrow_dict}:validation")) == 8


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path: Path, data: CaptionDataset) -> None:
    from datasets import Dataset, Features, Image, Value

    from difflens.refsets.hf_datasets import datasets_env

    cells = [{"bytes": (data.folder / f"{i:04d}.png").read_bytes(), "path": None} for i in range(6)]
    cells[2] = {"bytes": b"definitely not an image", "path": None}
    cells[4] = {"bytes": cells[4]["bytes"][:60], "path": None}  # truncated PNG
    with datasets_env(offline=True):
        ds = Dataset.from_dict({"image": cells, "caption": data.captions[:6]},
                               features=Features({"image": Image(), "caption": Value("string")}))
        ds.save_to_disk(str(tmp_path / "broken"))
        ds.to_parquet(str(tmp_path / "broken.parquet"))
    for spec in (tmp_path / "broken", tmp_path / "broken.parquet"):
        images, src = _read_all(str(spec))
        assert len(images) == 4
        assert np.array_equal(images, data.images[[0, 1, 3, 5]])
        assert [s.row for s in src.skipped] == [2, 4]
        rep = src.report()
        assert rep["num_skipped"] == 2 and rep["num_decoded"] == 4 and rep["skipped_rows"] == [2, 4]
        assert len(src.warnings) == 1 and "skipped 2 image(s)" in src.warnings[0]
        assert "row 2" in src.warnings[0] and "row 4" in src.warnings[0]
        strict = open_image_source(str(spec), strict=True)
        with pytest.raises(DifflensError, match=r"row 2 .* cannot be decoded"):
            list(strict.iter_batches(4))
