"""Invalid statistics and features are refused (exit 2, one line of difflens's own words, no traceback,
nothing written); the JSON record says what was used (schema_version, effective settings, counts per
metric, protocol, explicit infinities); the small-sample and duplicate warnings reach the JSON; statistics
made at different --reference-size are refused like any protocol mismatch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli as run

D = 16
LIBRARY_ADVICE = ("allow_pickle", "weights_only", "pickled", "unsafely", "pickle.load")



def assert_refused(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in err, (w, err)
    for advice in LIBRARY_ADVICE:
        assert advice not in err, (advice, err)


def _fp(**extra: object) -> dict[str, object]:
    from difflens.metrics.fingerprint import Fingerprint

    return {**Fingerprint(protocol="tf-legacy", weights_sha256="c" * 64).to_dict(), **extra}


def _feats(n: int, seed: int, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture
def good(tmp_path: Path) -> dict[str, Path]:
    from difflens.metrics.stats import GaussianStats, save_stats

    paths = {"feats": tmp_path / "good.npy", "stats": tmp_path / "good_stats.npz"}
    np.save(paths["feats"], _feats(30, 1))
    save_stats(paths["stats"], GaussianStats.from_features(_feats(30, 2)), _fp())
    return paths


def _bad_files(d: Path) -> list[tuple[Path, list[str]]]:
    """(file given as --real, words the one error line must hold)."""
    eye = np.eye(D)
    asym = eye.copy()
    asym[0, 5] = 0.5  # sigma[5, 0] stays 0
    nan_sigma = eye.copy()
    nan_sigma[3, 3] = np.nan
    inf_mu = np.zeros(D)
    inf_mu[2] = np.inf
    cases: list[tuple[str, dict[str, np.ndarray], list[str]]] = [
        ("neg_identity.npz", {"mu": np.zeros(D), "sigma": -eye}, ["not positive semi-definite", "-1"]),
        ("asymmetric.npz", {"mu": np.zeros(D), "sigma": asym}, ["not symmetric"]),
        ("shapes.npz", {"mu": np.zeros(D), "sigma": np.eye(D - 1)},
         ["inconsistent shapes", "(16,)", "(15, 15)"]),
        ("nan_sigma.npz", {"mu": np.zeros(D), "sigma": nan_sigma}, ["sigma contains NaN or infinite"]),
        ("inf_mu.npz", {"mu": inf_mu, "sigma": eye}, ["mu contains NaN or infinite"]),
        ("huge_mu.npz", {"mu": np.full(D, 1e20), "sigma": eye}, ["mu reaches 1e+20", "overflows"]),
        ("huge_sigma.npz", {"mu": np.zeros(D), "sigma": eye * 1e30}, ["sigma reaches 1e+30"]),
        ("no_sigma.npz", {"mu": np.zeros(D)}, ["statistics file without sigma", "arrays found: mu"]),
        ("no_sigma_n.npz", {"mu": np.zeros(D), "n": np.asarray(40), "fingerprint": np.asarray("{}")},
         ["statistics file without sigma"]),
        # a statistics file with features: n and mu must describe the features
        ("features_bad_n.npz", {"mu": _feats(30, 2).mean(0, dtype=np.float64), "sigma": eye,
                                "n": np.asarray(99), "features": _feats(30, 2)},
         ["records n=99", "30 feature"]),
        ("features_bad_mu.npz", {"mu": np.ones(D), "sigma": eye, "n": np.asarray(30),
                                 "features": _feats(30, 2)}, ["not the mean of its features"]),
    ]
    out = []
    for name, arrays, words in cases:
        np.savez(d / name, **arrays)
        out.append((d / name, words))
    np.save(d / "huge_features.npy", _feats(30, 3) * np.float32(1e30))
    out.append((d / "huge_features.npy", ["feature values reach", "beyond 1e+12"]))
    nan_feats = _feats(30, 3)
    nan_feats[4, 4] = np.nan
    np.save(d / "nan_features.npy", nan_feats)
    out.append((d / "nan_features.npy", ["1 feature value(s) are NaN or infinite"]))
    (d / "text.npz").write_text("mu,sigma\n1,2\n")
    out.append((d / "text.npz", ["is a text file, not an .npz"]))
    (d / "text.npy").write_text("1 2 3\n")
    out.append((d / "text.npy", ["is a text file, not a NumPy .npy array"]))
    np.savez(d / "objects.npz", mu=np.array([{"a": 1}], dtype=object), sigma=eye)
    out.append((d / "objects.npz", ["holds Python objects"]))
    return out


def test_invalid_statistics_and_features_are_refused(good: dict[str, Path], tmp_path: Path, capsys) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    out = tmp_path / "out" / "m.json"
    for path, words in _bad_files(bad_dir):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        for fake in ("--fake-features", "--fake"):
            other = good["feats"] if fake == "--fake-features" else good["stats"]
            code, _, err = run(["metrics", "--real", str(path), fake, str(other), "--metrics", "fid",
                                "--json", str(out)], capsys)
            assert_refused(code, err, str(path.name), *words)
            assert "expected uint8" not in err  # a statistics file is never called an image array
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    # the same refusals through --real-features where the file is features
    for name, words in (("huge_features.npy", ["beyond 1e+12"]), ("text.npz", ["is a text file"])):
        code, _, err = run(["metrics", "--real-features", str(bad_dir / name), "--fake-features",
                            str(good["feats"]), "--save-fake-stats", str(tmp_path / "s.npz"), "--json",
                            str(out)], capsys)
        assert_refused(code, err, *words)
        assert not out.exists() and not (tmp_path / "s.npz").exists()


def test_library_advice_never_reaches_the_user(good: dict[str, Path], tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    code, _, err = run(["stats", "show", str(text)], capsys)
    assert_refused(code, err, "is a text file, not an .npz of statistics")
    code, _, err = run(["stats", "show", str(tmp_path)], capsys)
    assert_refused(code, err, "a folder")
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "m.json"
    code, _, err = run(["metrics", "--real", str(images), "--fake", str(images), "--inception-weights",
                        str(text), "--device", "cpu", "--json", str(out)], capsys)
    assert_refused(code, err, "--inception-weights", "is a text file, not a torch state dict")
    assert not out.exists()


def test_float32_singular_covariance_is_accepted(good: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A singular covariance (N=10 <= D=16) stored as float32: its rounding gives eigenvalues of about
    -1e-8 of the norm, far inside the 1e-5 tolerance, so the file is a valid covariance."""
    x = _feats(10, 5).astype(np.float64)
    cov = np.cov(x, rowvar=False)
    assert np.linalg.eigvalsh(cov.astype(np.float32).astype(np.float64))[0] < 1e-9  # (numerically) singular
    f32 = tmp_path / "f32.npz"
    np.savez(f32, mu=x.mean(0).astype(np.float32), sigma=cov.astype(np.float32))
    f64 = tmp_path / "f64.npz"
    np.savez(f64, mu=x.mean(0), sigma=cov)
    values = []
    for path in (f32, f64):
        out = tmp_path / f"{path.stem}.json"
        code, _, err = run(["metrics", "--real", str(path), "--fake-features", str(good["feats"]), "--json",
                            str(out)], capsys)
        assert code == 0, err
        values.append(json.loads(out.read_text())["metrics"]["fid"]["value"])
    # float32 rounding of sigma (6e-8 relative) moves the square-root trace term by ~sqrt(6e-8) at worst
    assert values[0] == pytest.approx(values[1], rel=1e-3)


def test_json_records_what_was_used(tmp_path: Path, capsys) -> None:
    real = tmp_path / "real.npy"
    np.save(real, _feats(12, 1))
    fake = tmp_path / "fake.npz"  # features with logits: IS is possible
    np.savez(fake, features=_feats(12, 2), logits=_feats(12, 3, d=20) * 3)
    out = tmp_path / "m.json"
    code, _, err = run(["metrics", "--real-features", str(real), "--fake", str(fake), "--is-splits", "100",
                        "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["schema_version"] == 1
    m, settings = res["metrics"], res["protocol"]["settings"]
    assert set(m) == {"fid", "kid", "is", "precision", "recall", "density", "coverage"}
    assert m["is"]["splits"] == 12 and settings["is_splits"] == 12  # used, not the requested 100
    assert m["is"]["n_fake"] == 12 and "n_real" not in m["is"] and isinstance(m["is"]["std"], float)
    assert (m["kid"]["subset_size"], m["kid"]["num_subsets"]) == (12, 100)
    assert (settings["kid_subset_size"], settings["kid_subsets"]) == (12, 100)
    assert m["kid"]["std"] is None  # every subset is the whole of both sets: no spread to measure
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert (m[key]["n_real"], m[key]["n_fake"]) == (12, 12), key
    assert (m["precision"]["k"], m["density"]["k"]) == (3, 5)
    assert (res["n_real"], res["n_fake"]) == (12, 12)
    assert res["protocol"]["protocol"] == "unknown"  # precomputed inputs without a fingerprint
    warnings = res["warnings"]
    assert any(w.startswith("IS on 12 images in 12 split(s)") for w in warnings), warnings
    assert any("KID subset size reduced from 1000 to 12" in w and "std over subsets is undefined" in w
               for w in warnings), warnings
    assert any("used 12 splits" in w for w in warnings)


def test_kid_subset_equal_to_one_set_warns(tmp_path: Path, capsys) -> None:
    real, fake = tmp_path / "r.npy", tmp_path / "f.npy"
    np.save(real, _feats(12, 1))
    np.save(fake, _feats(20, 2))
    out = tmp_path / "m.json"
    code, _, err = run(["metrics", "--real-features", str(real), "--fake-features", str(fake), "--metrics",
                        "kid", "--kid-subset-size", "12", "--kid-subsets", "20", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["metrics"]["kid"]["std"] > 0  # the fake subsets still vary
    assert any("KID subset size 12 equals the number of samples" in w and "whole real set" in w
               for w in res["warnings"]), res["warnings"]


def test_duplicated_reference_images_are_reported(tmp_path: Path, capsys) -> None:
    real, fake = tmp_path / "r.npy", tmp_path / "f.npy"
    np.save(real, np.repeat(_feats(6, 1), 4, axis=0))  # every reference row 4 times: 3rd-NN radius 0
    np.save(fake, _feats(20, 2))
    out = tmp_path / "m.json"
    code, _, err = run(["metrics", "--real-features", str(real), "--fake-features", str(fake), "--metrics",
                        "pr,dc", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    dup = [w for w in res["warnings"] if "repeat another row exactly" in w]
    assert len(dup) == 1 and dup[0].startswith("--real-features") and "18 of 24" in dup[0], res["warnings"]
    assert "up to 4 copies" in dup[0] and "degenerate" in dup[0]
    assert res["metrics"]["precision"]["value"] == 0.0  # what the warning explains
    # no duplicates, no warning
    np.save(real, _feats(24, 1))
    code, _, err = run(["metrics", "--real-features", str(real), "--fake-features", str(fake), "--metrics",
                        "pr", "--json", str(out)], capsys)
    assert code == 0 and not any("repeat another row" in w for w in json.loads(out.read_text())["warnings"])


def test_duplicate_rows_counts_exactly() -> None:
    from difflens.metrics.validate import duplicate_rows

    x = _feats(50, 0, d=7)  # 28-byte rows: the uint32 view
    assert duplicate_rows(x) == (0, 1)
    x[10] = x[3]
    x[11] = x[3]
    x[40] = x[41]
    assert duplicate_rows(x) == (3, 3)
    odd = np.arange(15, dtype=np.uint8).reshape(5, 3)  # 3-byte rows: the byte view
    odd[4] = odd[0]
    assert duplicate_rows(odd) == (1, 2)


def test_infinities_and_disagreeing_counts_are_explicit() -> None:
    from difflens.atomic import json_text
    from difflens.metrics.record import finalize

    raw = {"metrics": {"fid": {"value": math.inf, "n_real": 10, "n_fake": 8},
                       "kid": {"value": -math.inf, "std": math.nan, "n_real": 10, "n_fake": 8},
                       "cmmd": {"value": 0.5, "n_real": 12, "n_fake": 8}},
           "n_real": None, "n_fake": None, "protocol": {}, "warnings": ["w0"]}
    rec = finalize(raw)
    assert rec["schema_version"] == 1 and next(iter(rec)) == "schema_version"
    assert rec["metrics"]["fid"]["value"] == "inf" and rec["metrics"]["kid"]["value"] == "-inf"
    assert rec["metrics"]["kid"]["std"] is None
    flagged = [w for w in rec["warnings"] if "recorded as" in w]
    assert len(flagged) == 3 and any(w.startswith("fid.value is inf") for w in flagged)
    assert rec["n_fake"] == 8 and rec["n_real"] is None  # the metrics disagree on n_real (10 vs 12)
    assert any("n_real differs between metrics" in w for w in rec["warnings"])
    assert rec["protocol"]["protocol"] == "none"
    assert finalize(rec) == rec  # idempotent: evaluate() finalizes again after adding embedding metrics
    assert json.loads(json_text(rec))["metrics"]["fid"]["value"] == "inf"


def test_embedding_only_run_records_counts_and_protocol(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from difflens.tiny_encoders import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    rng = np.random.default_rng(0)
    for side, n in (("real", 12), ("fake", 9)):
        (tmp_path / side).mkdir()
        for i in range(n):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / side / f"{i}.png")
    out = tmp_path / "m.json"
    code, stdout, err = run(["metrics", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                             "--metrics", "cmmd", "--cmmd-clip-model", str(clip), "--device", "cpu", "--json",
                             str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["schema_version"] == 1
    assert (res["metrics"]["cmmd"]["n_real"], res["metrics"]["cmmd"]["n_fake"]) == (12, 9)
    assert (res["n_real"], res["n_fake"]) == (12, 9)  # not null: CMMD used 12 real images
    assert res["protocol"]["protocol"] == "none"  # no Inception metric ran
    assert res["protocol"]["embedding"]["cmmd"]["protocol"] == "cmmd-resize"
    assert res["protocol"]["settings"]["metrics"] == ["cmmd"]
    assert "protocol=None" not in stdout + err and "(cmmd-resize)" in stdout + err


def _stats(path: Path, seed: int, **fp: object) -> Path:
    from difflens.metrics.stats import GaussianStats, save_stats

    save_stats(path, GaussianStats.from_features(_feats(30, seed)), _fp(**fp))
    return path


def test_reference_size_mismatch_is_a_protocol_mismatch(tmp_path: Path, capsys) -> None:
    from difflens.refsets.preprocess import ReferencePreprocess

    a = _stats(tmp_path / "ref256.npz", 1, **ReferencePreprocess(256).fingerprint())
    b = _stats(tmp_path / "ref512.npz", 2, **ReferencePreprocess(512).fingerprint())
    as_stored = _stats(tmp_path / "as_stored.npz", 3, **ReferencePreprocess(None).fingerprint())
    plain = _stats(tmp_path / "plain.npz", 4)  # e.g. statistics of generated images: no such field
    out = tmp_path / "m.json"
    for other, words in ((b, "reference_preprocess: size 256 != size 512"),
                         (as_stored, "reference_preprocess: size 256 != None (as stored)")):
        code, _, err = run(["metrics", "--real", str(a), "--fake", str(other), "--json", str(out)], capsys)
        assert_refused(code, err, "different protocols", words, "--reference-size",
                       "--allow-protocol-mismatch")
        assert not out.exists()
    code, _, err = run(["metrics", "--real", str(a), "--fake", str(b), "--json", str(out),
                        "--allow-protocol-mismatch"], capsys)
    assert code == 0, err
    warnings = json.loads(out.read_text())["warnings"]
    assert any("size 256 != size 512" in w and "not meaningful" in w for w in warnings)
    code, _, err = run(["metrics", "--real", str(a), "--fake", str(plain), "--json", str(out)], capsys)
    assert code == 0, err  # only compared when both sides record it


def test_stats_file_with_features_allows_kid_and_knn(tmp_path: Path, capsys) -> None:
    """`stats build --keep-features` files: --real FILE gives the same KID and P/R/D/C as --real-features
    FILE (the same features through the same code: exact equality)."""
    from difflens.metrics.stats import GaussianStats, save_stats

    x = _feats(30, 1)
    ref = tmp_path / "ref.npz"
    save_stats(ref, GaussianStats.from_features(x), _fp(), extra={"features": x})
    fake = tmp_path / "fake.npy"
    np.save(fake, _feats(25, 2))
    results = []
    for flag in ("--real", "--real-features"):
        out = tmp_path / f"{flag.strip('-')}.json"
        code, _, err = run(["metrics", flag, str(ref), "--fake-features", str(fake), "--metrics",
                            "fid,kid,pr,dc", "--kid-subset-size", "10", "--json", str(out)], capsys)
        assert code == 0, err
        results.append(json.loads(out.read_text()))
    assert set(results[0]["metrics"]) == {"fid", "kid", "precision", "recall", "density", "coverage"}
    assert results[0]["metrics"] == results[1]["metrics"]
    assert results[0]["protocol"]["protocol"] == "tf-legacy"  # the file's fingerprint is kept


def test_dataset_spec_records_its_reference_size(tmp_path: Path, capsys) -> None:
    """A dataset read with --reference-size carries it into the fingerprint of its features, so statistics
    built at another size are refused before any image goes through Inception (the weights file is only
    hashed before the refusal, so any file serves)."""
    from difflens.hashing import sha256_file
    from difflens.refsets.demo_data import write_caption_dataset
    from difflens.refsets.preprocess import ReferencePreprocess

    data = write_caption_dataset(tmp_path / "data", n=8)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"only hashed before the refusal")
    ref = tmp_path / "ref32.npz"
    from difflens.metrics.stats import GaussianStats, save_stats

    fp = {**_fp(), "weights_sha256": sha256_file(weights), **ReferencePreprocess(32).fingerprint()}
    save_stats(ref, GaussianStats.from_features(_feats(30, 1, d=2048)), fp)
    out = tmp_path / "m.json"
    code, _, err = run(["metrics", "--real", str(ref), "--fake", str(data.parquet), "--reference-size", "16",
                        "--num-real", "6", "--inception-weights", str(weights), "--metrics", "fid",
                        "--device", "cpu", "--json", str(out)], capsys)
    assert_refused(code, err, "different protocols (reference_preprocess: size 32 != size 16)")
    assert not out.exists()


def test_stats_build_reports_duplicate_images(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                              capsys) -> None:
    from PIL import Image

    from difflens.metrics.inception import make_random_inception_weights

    weights = tmp_path_factory.getbasetemp() / "inception-random-seed0" / "weights.pth"
    if not weights.exists():  # the same session-wide file as test_metrics_cli's
        weights.parent.mkdir(parents=True, exist_ok=True)
        make_random_inception_weights(weights, seed=0)
    folder = tmp_path / "refs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for i in range(3):  # one image three times, one other
        Image.fromarray(same).save(folder / f"dup{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "other.png")
    out = tmp_path / "ref.npz"
    # batch size 1: each copy goes through the same kernels alone, so the copies' features are bit-equal on
    # any CPU (in one batch, rows at different positions could be computed by different SIMD paths)
    code, _, err = run(["stats", "build", "--real", str(folder), "--out", str(out), "--inception-weights",
                        str(weights), "--device", "cpu", "--batch-size", "1"], capsys)
    assert code == 0, err
    from difflens.refsets.build_stats import read_dataset_info

    info = read_dataset_info(out)
    assert info is not None
    dup = [w for w in info["warnings"] if "same Inception features as an earlier image" in w]
    assert len(dup) == 1 and dup[0].startswith("2 of 4 images"), info["warnings"]
    assert "2 of 4 images" in " ".join(err.split())  # also shown
