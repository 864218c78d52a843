"""Reference statistics built once (``difflens stats build``) give the same FID as computing from the
images; the registry of published statistics fetches, pins and verifies files, and names the path to place
them at offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from difflens.cli import main
from difflens.errors import DifflensError
from difflens.metrics.stats import GaussianStats, load_stats
from difflens.refsets.demo_data import CaptionDataset, write_caption_dataset
from difflens.refsets.preprocess import ReferencePreprocess
from difflens.refsets.subset import draw_subset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> CaptionDataset:
    return write_caption_dataset(tmp_path_factory.mktemp("refdata"), n=24)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from difflens.metrics.inception import make_random_inception_weights

    folder = tmp_path_factory.mktemp("inception")
    return make_random_inception_weights(folder / "random-inception.pth", seed=0)


@pytest.fixture(autouse=True)
def _online_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HF_HUB_OFFLINE", "DIFFLENS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    cap = capsys.readouterr()
    return int(exc.value.code or 0), cap.out, cap.err


def test_stats_file_gives_the_same_fid_as_the_images(data: CaptionDataset, weights: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ref.npz"
    code, _, err = _run(["stats", "build", "--real", str(data.parquet), "--out", str(out), "--keep-features",
                         "--num-real", "6", "--subset-seed", "2", "--reference-size", "32",
                         "--inception-weights", str(weights), "--device", "cpu", "--batch-size", "4"], capsys)
    assert code == 0, err
    assert "RANDOM-INIT" in err  # the random weights are announced
    stats, fingerprint, extra = load_stats(out)
    assert stats.n == 6

    # the same rows, read directly and preprocessed the same way, through `compute_metrics` on the images;
    # any second set will do for the comparison: precomputed features of a Gaussian cloud
    from difflens.metrics.api import compute_metrics
    from difflens.metrics.inception import resolve_inception_weights

    rows = draw_subset(24, 6, seed=2).indices
    prep = ReferencePreprocess(32)
    images = np.stack([prep.apply_array(data.images[r]) for r in rows])
    fake = np.random.default_rng(0).standard_normal((10, 2048)).astype(np.float32)
    common = {"fake_features": fake, "metrics": "fid", "show_progress": False}
    fid_file = compute_metrics(real=out, **common)["metrics"]["fid"]["value"]
    fid_images = compute_metrics(real=images, inception_weights=weights, device="cpu", batch_size=6,
                                 **common)["metrics"]["fid"]["value"]
    assert fid_file > 0
    # batches of 4 (stats build) vs one of 6: bit-identical features on an AVX2 CPU, but a conv kernel may
    # be picked by batch size elsewhere (features then agree to ~2e-5 relative, see test_metrics_agreement);
    # another subset or another resize moves FID by far more than 1e-4
    assert fid_file == pytest.approx(fid_images, rel=1e-4)
    # the kept features are the ones the statistics summarize
    kept = GaussianStats.from_features(extra["features"])
    assert extra["features"].shape == (6, 2048) and extra["features"].dtype == np.float32
    assert np.allclose(kept.mean, stats.mean, rtol=1e-6, atol=1e-6)
    assert np.allclose(kept.covariance(), stats.covariance(), rtol=1e-5, atol=1e-6)

    # fingerprint and dataset identity
    assert fingerprint is not None and fingerprint["protocol"] == "tf-legacy"
    assert fingerprint["weights_sha256"] == resolve_inception_weights(weights).sha256
    assert fingerprint["reference_preprocess"]["size"] == 32
    info = json.loads(str(extra["dataset"]))
    ident = info["identity"]
    assert ident["kind"] == "parquet" and ident["image_column"] == "image"
    assert ident["subset"]["seed"] == 2 and ident["subset"]["indices_sha256"] == draw_subset(24, 6, 2).digest
    assert info["read"]["num_decoded"] == 6 and info["read"]["num_skipped"] == 0
    assert np.array_equal(extra["subset_rows"], rows)
    code, shown, err = _run(["stats", "show", str(out)], capsys)
    assert code == 0, err
    assert json.loads(shown)["dataset"]["identity"]["kind"] == "parquet"


def test_stats_build_bad_input_writes_nothing(data: CaptionDataset, weights: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.npz"
    base = ["stats", "build", "--out", str(out), "--inception-weights", str(weights), "--device", "cpu"]
    cases = [
        (["--real", str(data.arrow), "--image-column", "img"], "available columns: image, caption"),
        (["--real", f"{data.arrow_dict}:test"], "available splits: train, validation"),
        (["--real", str(data.arrow), "--num-real", "100"], "more rows than the dataset has"),
        (["--real", str(data.arrow), "--reference-size", "1"], "out of range"),
        (["--real", "hf:nobody/absent:train", "--offline"], "not in the local cache"),
        (["--real", str(tmp_path / "missing")], "does not exist"),
    ]
    for args, needle in cases:
        code, _, err = _run([*base, *args], capsys)
        assert code == 2, (args, err)
        assert needle in err, (args, err)
        assert "Traceback" not in err
        assert not out.exists()
    code, _, err = _run(["stats", "build", "--real", str(data.arrow), "--out", str(tmp_path / "x.txt")],
                        capsys)
    assert code == 2 and "must end in .npz" in err
    code, _, err = _run([*base, "--real", str(data.arrow), "--no-such-flag"], capsys)
    assert code == 2 and "No such option" in err
    assert list(tmp_path.iterdir()) == []


def _write_stats(path: Path, seed: int, dim: int = 6) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((20, dim))
    np.savez(path, mu=x.mean(0), sigma=np.cov(x, rowvar=False))


def test_registry_fetch_pin_verify_and_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from difflens.hashing import sha256_file as file_sha256
    from difflens.metrics.inception import KNOWN_SHA256
    from difflens.refsets.registry import (
        REGISTRY,
        RefStatsEntry,
        load_registry_stats,
        resolve_registry_stats,
    )

    published = tmp_path / "published" / "tiny_stats.npz"
    published.parent.mkdir()
    _write_stats(published, 0)
    entry = RefStatsEntry("tiny", published.as_uri(), protocol="tf-legacy", num_images=20, resolution=32,
                          dataset="a test set", publisher="this test")
    reg = {"tiny": entry}
    cache = tmp_path / "cache"

    with pytest.raises(DifflensError) as exc:  # offline and not cached: names the file path to place
        resolve_registry_stats("stats:tiny", offline=True, registry=reg, root=cache)
    assert str(cache / "tiny_stats.npz") in str(exc.value) and published.as_uri() in str(exc.value)

    first = resolve_registry_stats("stats:tiny", registry=reg, root=cache)  # "download" (file:// URL)
    assert first.downloaded and not first.verified and first.sha256 == file_sha256(published)
    assert "not verified" in first.warnings[0]
    assert (cache / "tiny_stats.npz.sha256").read_text().split()[0] == first.sha256
    again = resolve_registry_stats("stats:tiny", offline=True, registry=reg, root=cache)
    assert not again.downloaded and again.sha256 == first.sha256

    stats, fingerprint, extra = load_registry_stats("stats:tiny", offline=True, registry=reg, root=cache)
    assert stats.n == 20 and stats.dim == 6
    assert fingerprint["protocol"] == "tf-legacy" and fingerprint["weights_sha256"] == KNOWN_SHA256
    assert extra["dataset"]["sha256_verified"] is False

    _write_stats(cache / "tiny_stats.npz", 1)  # the cached file changes after it was pinned
    with pytest.raises(DifflensError, match="pinned"):
        resolve_registry_stats("stats:tiny", offline=True, registry=reg, root=cache)

    good = {"tiny": RefStatsEntry(**{**entry.__dict__, "sha256": file_sha256(published)})}
    bad = {"tiny": RefStatsEntry(**{**entry.__dict__, "sha256": "0" * 64})}
    fresh = tmp_path / "cache2"
    assert resolve_registry_stats("stats:tiny", registry=good, root=fresh).verified
    with pytest.raises(DifflensError, match="not the registered"):
        resolve_registry_stats("stats:tiny", registry=bad, root=tmp_path / "cache3")
    assert not (tmp_path / "cache3" / "tiny_stats.npz").exists()  # a bad download is deleted
    with pytest.raises(DifflensError, match="known: tiny"):
        resolve_registry_stats("stats:other", registry=reg, root=cache)

    # the built-in registry: every entry is marked unverified; offline fetch through the CLI names the path
    assert REGISTRY and all(not e.verified for e in REGISTRY.values())
    monkeypatch.setenv("DIFFLENS_CACHE_DIR", str(tmp_path / "dl-cache"))
    code, _, err = _run(["stats", "fetch", "cifar10-train-ttur", "--offline"], capsys)
    assert code == 2 and str(tmp_path / "dl-cache" / "refstats" / "fid_stats_cifar10_train.npz") in err
    assert "Traceback" not in err
    code, out, err = _run(["stats", "list"], capsys)  # entries on stdout (for grep), one a line
    assert code == 0 and "cifar10-train-ttur" in out and "unverified" in out and "Traceback" not in err
