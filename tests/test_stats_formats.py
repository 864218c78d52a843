"""Statistics made by other tools (difflens.metrics.stats_formats): the ADM evaluator's reference and sample
batches and clean-fid's statistics files read as difflens inputs, the warning that names them, their
missing-array errors, and ADM-style statistics written by ``difflens stats build --format adm``.

Layouts, from the reference code: ADM ``evaluations/evaluator.py`` (openai/guided-diffusion) reads images
from ``arr_0`` (``read_activations``) and, when the file has ``mu``, the statistics ``mu``/``sigma`` and
``mu_s``/``sigma_s`` (``read_statistics``); clean-fid 0.1.35 writes ``np.savez_compressed(outf, mu=mu,
sigma=sigma)`` to ``f"{name}_{mode}{model_modifier}_{split}_{res}.npz".lower()`` (``cleanfid/fid.py``
``make_custom_stats``; the same name in ``cleanfid/features.py`` ``get_reference_statistics``), with
``model_modifier`` empty for Inception and ``"_clip_vit_b_32"`` for CLIP-FID, and the KID features as
``feats`` in ``..._kid.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.api import compute_metrics
from difflens.metrics.sources import ArraySource, FeaturesSource, StatsSource, resolve_source
from difflens.metrics.stats import GaussianStats
from difflens.metrics.stats_formats import (
    detect_format,
    npz_array,
    parse_cleanfid_name,
    read_foreign_stats,
    save_adm_stats,
)

D = 12  # a small feature dimension: FID from two statistics files needs no network


def _stats(seed: int, n: int = 40, dim: int = D) -> GaussianStats:
    rng = np.random.default_rng(seed)
    return GaussianStats.from_features(rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) + seed)


def _cleanfid_name(name: str, mode: str, model_name: str, split: str, res: str | int) -> str:
    """clean-fid's own naming (cleanfid/features.py get_reference_statistics, 0.1.35)."""
    model_modifier = "" if model_name == "inception_v3" else "_" + model_name
    if split == "custom":
        res = "na"
    return f"{name}_{mode}{model_modifier}_{split}_{res}.npz".lower()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    real, real_s, fake = _stats(1), _stats(2, dim=7), _stats(3)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    out = {"pytorch-fid": tmp_path / "real_pytorch_fid.npz", "adm": tmp_path / "VIRTUAL_ref.npz",
           "clean-fid": tmp_path / _cleanfid_name("MyData", "clean", "inception_v3", "custom", 256),
           "fake": tmp_path / "fake.npz"}
    np.savez(out["pytorch-fid"], mu=real.mean, sigma=real.covariance())
    np.savez(out["adm"], arr_0=images, mu=real.mean, sigma=real.covariance(), mu_s=real_s.mean,
             sigma_s=real_s.covariance())
    np.savez_compressed(out["clean-fid"], mu=real.mean, sigma=real.covariance())
    np.savez(out["fake"], mu=fake.mean, sigma=fake.covariance())
    return out


def test_fid_from_adm_and_clean_fid_files_equals_fid_from_the_pytorch_fid_file(
        files: dict[str, Path]) -> None:
    values, warnings = {}, {}
    for fmt in ("pytorch-fid", "adm", "clean-fid"):
        res = compute_metrics(real=files[fmt], fake=files["fake"], metrics="fid", show_progress=False)
        values[fmt], warnings[fmt] = res["metrics"]["fid"]["value"], " ".join(res["warnings"])
    # the same float64 arrays through the same code path: bit-equal
    assert values["adm"] == values["pytorch-fid"] == values["clean-fid"] > 0
    from cleanfid.fid import frechet_distance  # the reference formula (sqrtm), another code path

    fake = np.load(files["fake"])
    real = np.load(files["pytorch-fid"])
    ref = frechet_distance(real["mu"], real["sigma"], fake["mu"], fake["sigma"])
    assert values["adm"] == pytest.approx(ref, rel=1e-6)
    # every foreign file is named in the no-fingerprint warning
    assert "carries no protocol fingerprint (an ADM reference batch" in warnings["adm"]
    assert "mixed_6/conv sFID mu_s/sigma_s and 5 images in arr_0" in warnings["adm"]
    assert ("(clean-fid Inception FID statistics of mydata, mode clean, split custom, resolution na, per "
            "the file name; its resize is difflens --protocol clean)") in warnings["clean-fid"]
    assert "a pytorch-fid statistics file?" in warnings["pytorch-fid"]


def test_clean_fid_names_follow_its_convention() -> None:
    cases = [(("cifar10", "clean", "inception_v3", "train", 32),
              ("cifar10", "clean", "inception_v3", "train", "32")),
             (("ffhq", "legacy_tensorflow", "inception_v3", "trainval70k", 1024),
              ("ffhq", "legacy_tensorflow", "inception_v3", "trainval70k", "1024")),
             (("my_set", "clean", "clip_vit_b_32", "custom", 0),
              ("my_set", "clean", "clip_vit_b_32", "custom", "na"))]
    for args, want in cases:
        parsed = parse_cleanfid_name(_cleanfid_name(*args))
        assert parsed is not None
        assert (parsed.name, parsed.mode, parsed.model, parsed.split, parsed.res) == want
        assert not parsed.kid
    assert parse_cleanfid_name("cifar10_clean_train_32_kid.npz").kid  # type: ignore[union-attr]
    clip = parse_cleanfid_name(_cleanfid_name("my_set", "clean", "clip_vit_b_32", "custom", 0))
    assert clip is not None and "CLIP-FID (ViT-B/32; difflens fd-clip)" in clip.describe()
    legacy = parse_cleanfid_name("x_legacy_pytorch_test_64.npz")
    assert legacy is not None and "no difflens --protocol has its resize" in legacy.describe()
    for name in ("stats.npz", "cifar10_train_32.npz", "CIFAR10_clean_train_32.npz", "a_clean_train.npz"):
        assert parse_cleanfid_name(name) is None, name
    assert detect_format("stats.npz", ["mu", "sigma"]) == "pytorch-fid"
    assert detect_format("cifar10_clean_train_32.npz", ["mu", "sigma"]) == "clean-fid"
    assert detect_format("x.npz", ["mu", "sigma", "n", "fingerprint"]) == "difflens"
    assert detect_format("x.npz", ["arr_0", "arr_1"]) == "adm"


def test_clean_fid_kid_features_read_as_features(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).standard_normal((9, D)).astype(np.float32)
    path = tmp_path / "mydata_clean_custom_na_kid.npz"
    np.savez_compressed(path, feats=feats)
    src = resolve_source(path, "--real")
    assert isinstance(src, FeaturesSource) and np.array_equal(src.features, feats)


def test_adm_batches_as_images_and_statistics(files: dict[str, Path], tmp_path: Path) -> None:
    ref = resolve_source(files["adm"], "--real")
    assert isinstance(ref, StatsSource) and ref.note is not None and "ADM reference batch" in ref.note
    assert ref.stats.n == -1 and set(ref.extra) == {"mu_s", "sigma_s"}
    images = np.load(files["adm"])["arr_0"]
    selected = resolve_source(f"{files['adm']}:arr_0", "--real")  # the reference batch's images
    assert isinstance(selected, ArraySource) and np.array_equal(np.asarray(selected.images), images)
    assert isinstance(selected.images, np.memmap)  # np.savez stores uncompressed: memory-mapped, not read
    # a sample batch (images and class labels, no statistics) reads as images, compressed or not
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"samples_{save.__name__}.npz"
        save(path, arr_0=images, arr_1=np.arange(5))
        src = resolve_source(path, "--fake")
        assert isinstance(src, ArraySource) and np.array_equal(np.asarray(src.images), images)
    compressed = tmp_path / "ref_compressed.npz"
    with np.load(files["adm"]) as raw:
        np.savez_compressed(compressed, **{k: raw[k] for k in raw.files})
    assert read_foreign_stats(compressed).images_shape == (5, 8, 8, 3)  # from the .npy header only
    with pytest.raises(DifflensError, match="ADM sample batch"):
        resolve_source(tmp_path / "samples_savez.npz", "--real-features", want_features=True)
    with pytest.raises(DifflensError, match="has no array 'arr_9'"):
        resolve_source(f"{files['adm']}:arr_9", "--real")


def test_sfid_reads_the_adm_spatial_statistics(files: dict[str, Path], tmp_path: Path) -> None:
    """The route hands an ADM batch's statistics (not its images) to sFID, which takes mu_s/sigma_s."""
    from cleanfid.fid import frechet_distance

    from difflens.metrics.base import create_metric
    from difflens.metrics.route import read_side_stats

    arrays, fp, where = read_side_stats(files["adm"])
    assert set(arrays) == {"mu", "sigma", "mu_s", "sigma_s"} and fp is None and "ADM reference batch" in where
    other = _stats(5, dim=7)
    metric = create_metric("sfid")
    metric.load_side_stats(True, arrays, fp)  # type: ignore[attr-defined]
    metric.load_side_stats(False, {"mu_s": other.mean, "sigma_s": other.covariance()}, None)  # type: ignore[attr-defined]
    value = metric.compute()["sfid"].value
    ref = frechet_distance(arrays["mu_s"], arrays["sigma_s"], other.mean, other.covariance())
    assert value == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize(("arrays", "missing"), [
    ({"arr_0": True, "mu": 1, "sigma": 1, "mu_s": 1}, "'sigma_s'"),
    ({"arr_0": True, "mu": 1, "mu_s": 1, "sigma_s": 1}, "'sigma'"),
    ({"arr_0": True, "mu": 1, "sigma": 1}, "'mu_s' and 'sigma_s'"),
])
def test_an_adm_file_without_its_arrays_is_one_error_naming_file_and_key(
        arrays: dict[str, object], missing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import assert_one_line_error, run_cli

    s = _stats(1)
    data = {"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "mu": s.mean, "sigma": s.covariance(),
            "mu_s": s.mean[:7], "sigma_s": s.covariance()[:7, :7]}
    path = tmp_path / "ref_batch.npz"
    np.savez(path, **{k: data[k] for k in arrays})
    with pytest.raises(DifflensError) as exc:
        read_foreign_stats(path)
    assert str(path) in str(exc.value) and f"lacks {missing}" in str(exc.value)
    fake = tmp_path / "fake.npz"
    np.savez(fake, mu=s.mean, sigma=s.covariance())
    out = tmp_path / "o.json"
    code, _, err = run_cli(["metrics", "--real", str(path), "--fake", str(fake), "--metrics", "fid", "--json",
                            str(out)], capsys)
    assert_one_line_error(code, err, "ref_batch.npz", f"lacks {missing}")
    assert not out.exists()


def test_a_clean_fid_file_without_sigma_names_it(tmp_path: Path) -> None:
    path = tmp_path / "mydata_clean_custom_na.npz"
    np.savez_compressed(path, mu=np.zeros(D))
    with pytest.raises(DifflensError, match=r"mydata_clean_custom_na\.npz lacks 'sigma'.*needs mu \(D,\) and "
                                            r"sigma \(D, D\)"):
        resolve_source(path, "--real")


def test_adm_style_statistics_round_trip(tmp_path: Path) -> None:
    fid, sfid = _stats(1, n=30), _stats(2, n=30, dim=7)
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "adm_style.npz"
    save_adm_stats(path, fid, sfid, {"protocol": "tf-legacy"}, {"feature_layer": "spatial"}, images=images)
    raw = np.load(path)  # what the ADM evaluator's read_statistics and read_activations see
    assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s"} <= set(raw.files)
    assert np.array_equal(raw["arr_0"], images) and np.array_equal(raw["mu_s"], sfid.mean)
    assert np.allclose(raw["sigma_s"], sfid.covariance(), rtol=0, atol=0)
    back = read_foreign_stats(path)
    assert back.format == "adm" and back.fingerprint == {"protocol": "tf-legacy"}
    assert back.fid.n == 30 and np.array_equal(back.fid.mean, fid.mean)
    assert np.allclose(back.sfid.covariance(), sfid.covariance(), rtol=1e-12, atol=0)
    assert json.loads(str(raw["fingerprint_s"])) == {"feature_layer": "spatial"}
    assert np.array_equal(npz_array(path, "arr_0"), images)
    with pytest.raises(DifflensError, match="30 images but sFID statistics of 31"):
        save_adm_stats(tmp_path / "bad.npz", fid, _stats(2, n=31, dim=7))
    assert not (tmp_path / "bad.npz").exists()


def test_stats_build_format_adm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The spatial statistics written equal those of the Inception extractor's own spatial layer."""
    from PIL import Image

    from cli_helpers import run_cli
    from difflens.features.inception import load_inception
    from difflens.metrics.inception import make_random_inception_weights

    weights = make_random_inception_weights(tmp_path / "random-inception.pth", seed=0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    out = tmp_path / "ref_adm.npz"
    code, _, err = run_cli(["stats", "build", "--real", str(folder), "--out", str(out), "--format", "adm",
                            "--inception-weights", str(weights), "--device", "cpu", "--batch-size", "2"],
                           capsys)
    assert code == 0, err
    raw = np.load(out)
    assert raw["mu"].shape == (2048,) and raw["sigma"].shape == (2048, 2048)
    assert raw["mu_s"].shape == (2023,) and raw["sigma_s"].shape == (2023, 2023)
    spatial = load_inception("tf-legacy", weights=weights, device="cpu")(images)["spatial"]
    direct = GaussianStats.from_features(spatial)
    # batches of 2 (stats build) vs one of 5: float32 noise of the convolutions at most, far below 1e-4
    assert np.allclose(raw["mu_s"], direct.mean, rtol=1e-4, atol=1e-5 * np.abs(direct.mean).max())
    assert np.allclose(raw["sigma_s"], direct.covariance(), rtol=1e-3,
                       atol=1e-4 * np.abs(direct.covariance()).max())
    fs = read_foreign_stats(out)
    assert fs.format == "adm" and fs.fid.n == 5 and fs.fingerprint is not None
    assert fs.fingerprint["weights_sha256"] and json.loads(str(raw["fingerprint_s"]))["feature_layer"]
    # difflens reads its own ADM-style file back with its fingerprint: the same images give FID = sFID = 0
    # (batches of 2 vs 5: float32 noise only; 5 other random images gave sFID 104 in a manual run)
    res = tmp_path / "res.json"
    code, _, err = run_cli(["metrics", "--real", str(out), "--fake", str(folder), "--metrics", "fid,sfid",
                            "--inception-weights", str(weights), "--device", "cpu", "--json", str(res)],
                           capsys)
    assert code == 0, err
    rec = json.loads(res.read_text(encoding="utf-8"))
    assert abs(rec["metrics"]["fid"]["value"]) < 1e-3 and abs(rec["metrics"]["sfid"]["value"]) < 1e-3
    assert not any("no protocol fingerprint" in w for w in rec["warnings"])
    code, _, err = run_cli(["stats", "build", "--real", str(folder), "--out", str(tmp_path / "x.npz"),
                            "--format", "tfrecord", "--inception-weights", str(weights)], capsys)
    assert code == 2 and "unknown --format 'tfrecord'" in err and not (tmp_path / "x.npz").exists()
