"""difflens metrics agree with torch-fidelity end to end on the same images and the same (random-init,
torch-fidelity-format) Inception weights; features are exactly torch-fidelity's; the clean protocol is
clean-fid's resize feeding the same network; statistics files round-trip.

The Inception forward pass is slow on CPU, so the image sets are small (20 + 20 images of 32 px).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from difflens.cli import main
from difflens.demo.sample_images import grayscale_crops, natural_crops

N = 12
KID_SUBSET = 10  # < N, so torch-fidelity's and difflens's subset draws must match


def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random-init weights file per test session (shared by the metrics test modules)."""
    from difflens.metrics.inception import make_random_inception_weights

    path = tmp_path_factory.getbasetemp() / "inception-random-seed0" / "weights.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_random_inception_weights(path, seed=0)
    return path


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch_fidelity

    root = tmp_path_factory.mktemp("agreement")
    weights = random_weights(tmp_path_factory)
    real_dir, fake_dir = root / "real", root / "fake"
    real_dir.mkdir()
    (fake_dir / "sub").mkdir(parents=True)
    for i, img in enumerate(natural_crops(N, 32, seed=11)):
        Image.fromarray(img).save(real_dir / f"r{i:02d}.png")
    fake = np.concatenate([natural_crops(N // 2, 32, seed=12), grayscale_crops(N // 2, 32, seed=13)])
    for i, img in enumerate(fake):
        pil = Image.fromarray(img)
        if i % 5 == 1:
            pil = pil.convert("L")  # the to-RGB rule, end to end: same as torch-fidelity's convert("RGB")
        elif i % 5 == 2:
            pil = pil.convert("RGBA")
        pil.save((fake_dir / "sub" if i % 2 else fake_dir) / f"f{i:02d}.png")

    tf = torch_fidelity.calculate_metrics(
        input1=str(fake_dir), input2=str(real_dir), cuda=False, fid=True, kid=True, isc=True, prc=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
        kid_subset_size=KID_SUBSET, isc_splits=3, batch_size=16, samples_find_deep=True,
        cache=False, verbose=False, save_cpu_ram=True)

    out = root / "out"
    argv = ["metrics", "--real", str(real_dir), "--fake", str(fake_dir), "--inception-weights", str(weights),
            "--device", "cpu", "--batch-size", "7", "--kid-subset-size", str(KID_SUBSET), "--is-splits", "3",
            "--json", str(out / "m.json"), "--save-real-stats", str(out / "real.npz"),
            "--save-fake-stats", str(out / "fake.npz")]
    assert _run(argv) == 0
    dl = json.loads((out / "m.json").read_text())
    return {"tf": tf, "dl": dl, "root": root, "out": out, "weights": weights, "real": real_dir,
            "fake": fake_dir}


def test_fid_kid_is_agree_with_torch_fidelity(setup: dict[str, Any]) -> None:
    tf, m = setup["tf"], setup["dl"]["metrics"]
    assert m["fid"]["value"] == pytest.approx(tf["frechet_inception_distance"], rel=1e-4)
    assert m["kid"]["value"] == pytest.approx(tf["kernel_inception_distance_mean"], rel=1e-4)
    assert m["kid"]["std"] == pytest.approx(tf["kernel_inception_distance_std"], rel=1e-3)
    assert m["kid"]["subset_size"] == KID_SUBSET
    # batch 7 here vs 16 in torch-fidelity: features may differ by float32 noise where the conv kernel is
    # picked by batch size (bit-identical on an AVX2 CPU), hence 1e-4 as for FID and KID, IS included
    assert m["is"]["value"] == pytest.approx(tf["inception_score_mean"], rel=1e-4)
    assert m["is"]["std"] == pytest.approx(tf["inception_score_std"], rel=1e-4, abs=1e-9)
    assert m["fid"]["value"] > 1e-3 and m["is"]["value"] > 1.0001  # not degenerate


def test_precision_recall_equal_torch_fidelity(setup: dict[str, Any]) -> None:
    tf, m = setup["tf"], setup["dl"]["metrics"]
    # the same samples are counted in: torch-fidelity returns the float32 mean of the same 0/1 decisions
    assert m["precision"]["value"] * N == round(tf["precision"] * N)
    assert m["recall"]["value"] * N == round(tf["recall"] * N)
    assert np.float32(m["precision"]["value"]) == np.float32(tf["precision"])
    assert np.float32(m["recall"]["value"]) == np.float32(tf["recall"])
    assert 0 < m["precision"]["value"] < 1 or 0 < m["recall"]["value"] < 1  # a non-trivial case


def test_json_schema_and_fingerprint(setup: dict[str, Any]) -> None:
    dl = setup["dl"]
    assert set(dl) == {"schema_version", "metrics", "n_real", "n_fake", "protocol", "versions", "warnings"}
    assert (dl["n_real"], dl["n_fake"]) == (N, N)
    assert set(dl["metrics"]) == {"fid", "kid", "is", "precision", "recall", "density", "coverage"}
    assert all(isinstance(v["value"], float) for v in dl["metrics"].values())
    proto = dl["protocol"]
    assert proto["protocol"] == "tf-legacy" and proto["weights_random_init"] is True
    from difflens.hashing import sha256_file

    assert proto["weights_sha256"] == sha256_file(setup["weights"])
    assert dl["warnings"][0].startswith("RANDOM-INIT")
    assert any("5000" in w for w in dl["warnings"]) and any("singular" in w for w in dl["warnings"])
    assert dl["versions"]["torch-fidelity"]


def test_stats_files_round_trip_without_torch(setup: dict[str, Any]) -> None:
    """FID from the two saved statistics files equals FID from the images (the stats path never loads
    torch: see test_lazy_imports)."""
    out = setup["out"]
    with np.load(out / "real.npz") as z:
        assert set(z.files) >= {"mu", "sigma", "n", "fingerprint"} and int(z["n"]) == N
        fp = json.loads(str(z["fingerprint"]))
    assert fp["weights_sha256"] == setup["dl"]["protocol"]["weights_sha256"]
    assert _run(["metrics", "--real", str(out / "real.npz"), "--fake", str(out / "fake.npz"),
                 "--json", str(out / "s.json")]) == 0
    res = json.loads((out / "s.json").read_text())
    assert set(res["metrics"]) == {"fid"}
    assert res["metrics"]["fid"]["value"] == pytest.approx(setup["dl"]["metrics"]["fid"]["value"], rel=1e-7)
    assert res["protocol"]["protocol"] == "tf-legacy"


def test_fingerprint_mismatch_refused_before_reading_images(setup: dict[str, Any], capsys) -> None:
    from difflens.metrics.stats import load_stats, save_stats

    out = setup["out"]
    stats, fp, _ = load_stats(out / "real.npz")
    save_stats(out / "clean.npz", stats, dict(fp, protocol="clean"))
    capsys.readouterr()
    argv = ["metrics", "--real", str(out / "clean.npz"), "--fake", str(setup["fake"]),
            "--inception-weights", str(setup["weights"]), "--json", str(out / "mm.json")]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "different protocols" in err and "--allow-protocol-mismatch" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (out / "mm.json").exists()


@pytest.fixture(scope="module")
def extractor(setup: dict[str, Any]) -> Any:
    from difflens.metrics.inception import InceptionExtractor, resolve_inception_weights

    return InceptionExtractor(resolve_inception_weights(setup["weights"]), device="cpu")


def test_features_exactly_torch_fidelitys_and_batch_size_invariant(extractor: Any) -> None:
    import torch

    from difflens.metrics.extract import extract_features
    from difflens.metrics.sources import resolve_source

    pair = natural_crops(2, 40, seed=21)
    odd = np.random.default_rng(5).integers(0, 256, (57, 31, 3), dtype=np.uint8)
    with torch.no_grad():  # torch-fidelity's own forward: the equal-size pair as one batch, then the odd one
        ref = torch.cat([extractor.model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())[0]
                         for x in (pair, odd[None])]).numpy()
    src = resolve_source([pair[0], pair[1], odd], "images")
    two = extract_features(src, extractor, batch_size=2, show_progress=False)
    np.testing.assert_array_equal(two.pool3, ref)  # bit for bit: same layers, same resize, same batches
    three = extract_features(src, extractor, batch_size=3, show_progress=False)
    np.testing.assert_allclose(three.pool3, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(three.logits, two.logits, rtol=2e-5, atol=2e-5 * np.abs(two.logits).max())
    assert two.pool3.shape == (3, 2048) and two.logits.shape == (3, 1008)


def test_clean_protocol_is_clean_fid_resize_into_the_same_network(extractor: Any) -> None:
    """A 299x299 image needs no resize under either protocol, so clean == tf-legacy == torch-fidelity
    there; elsewhere the clean input is clean-fid's own resize (checked bit for bit in test_metrics_io)."""
    import torch
    from cleanfid.resize import make_resizer

    from difflens.metrics.inception import forward_normalized

    legacy, clean = extractor, extractor.with_protocol("clean")
    assert clean.fingerprint.to_dict()["protocol"] == "clean"
    big = np.random.default_rng(1).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    a, _ = legacy([legacy.prepare(x) for x in big])
    b, _ = clean([clean.prepare(x) for x in big])
    np.testing.assert_array_equal(a, b)
    small = natural_crops(1, 37, seed=3)[0]
    resized = make_resizer("PIL", False, "bicubic", (299, 299))(small)
    x = (torch.from_numpy(resized).permute(2, 0, 1)[None] - 128) / 128
    with torch.no_grad():
        ref, _ = forward_normalized(clean.model, x)
    got, _ = clean([clean.prepare(small)])
    np.testing.assert_array_equal(got, ref.numpy())
    assert not np.allclose(got, legacy([small])[0])  # the two protocols differ on resized images
