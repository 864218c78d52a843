"""`difflens metrics` CLI: the JSON result, statistics files, fingerprints, bootstrap, and bad input (one
clear error line, exit code 2, no traceback, nothing written). Mostly on small precomputed features, so
no Inception pass is needed; the image cases use two or three tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli as run

D = 16


def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random-init weights file per test session (the same path as test_metrics_agreement's)."""
    from difflens.metrics.inception import make_random_inception_weights

    path = tmp_path_factory.getbasetemp() / "inception-random-seed0" / "weights.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_random_inception_weights(path, seed=0)
    return path



def assert_bad(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 or err.startswith("Usage"), err  # click usage errors have their own layout
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def feats(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((40, D)).astype(np.float32)
    fake = (rng.standard_normal((36, D)) * 1.2 + 0.3).astype(np.float32)
    paths = {"real": tmp_path / "real.npy", "fake": tmp_path / "fake.npy"}
    np.save(paths["real"], real)
    np.save(paths["fake"], fake)
    return paths


def test_features_run_json_schema_and_table(feats: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "o" / "m.json"
    code, stdout, err = run(["metrics", "--real-features", str(feats["real"]), "--fake-features",
                             str(feats["fake"]), "--kid-subset-size", "20", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert set(res) == {"schema_version", "metrics", "n_real", "n_fake", "protocol", "versions", "warnings"}
    assert set(res["metrics"]) == {"fid", "kid", "precision", "recall", "density", "coverage"}
    assert (res["n_real"], res["n_fake"]) == (40, 36)
    assert set(res["metrics"]["kid"]) >= {"value", "std"}
    assert all(set(v) >= {"value"} and "ci95" not in v for v in res["metrics"].values())
    assert res["protocol"]["protocol"] == "unknown"
    assert res["versions"]["numpy"]
    for word in ("FID", "KID", "precision", "coverage", "n_real=40"):
        assert word in stdout
    from difflens.metrics.fid import frechet_distance

    r, f = np.load(feats["real"]).astype(np.float64), np.load(feats["fake"]).astype(np.float64)
    ref = frechet_distance(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))
    assert res["metrics"]["fid"]["value"] == pytest.approx(ref, rel=1e-9)


def test_bootstrap_intervals(feats: dict[str, Path], tmp_path: Path, capsys) -> None:
    outs = []
    for name in ("a.json", "b.json"):
        code, _, err = run(["metrics", "--real-features", str(feats["real"]), "--fake-features",
                            str(feats["fake"]), "--kid-subset-size", "20", "--kid-subsets", "10",
                            "--bootstrap", "15", "--seed", "3", "--json", str(tmp_path / name)], capsys)
        assert code == 0, err
        outs.append(json.loads((tmp_path / name).read_text()))
    m = outs[0]["metrics"]
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        lo, hi = m[key]["ci95"]
        assert lo <= hi and np.isfinite([lo, hi]).all()
    assert m["fid"]["ci95"][1] > m["fid"]["ci95"][0]
    assert outs[0]["metrics"] == outs[1]["metrics"]  # seeded
    assert any("bootstrap" in w for w in outs[0]["warnings"])


def test_save_stats_round_trip_and_pytorch_fid_files(feats: dict[str, Path], tmp_path: Path, capsys) -> None:
    stats = tmp_path / "real_stats.npz"
    code, stdout, err = run(["metrics", "--real-features", str(feats["real"]), "--save-stats", str(stats)],
                            capsys)
    assert code == 0, err
    assert "wrote" in stdout
    with np.load(stats) as z:
        assert {"mu", "sigma", "n", "fingerprint"} <= set(z.files) and int(z["n"]) == 40
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run(["metrics", "--real", str(stats), "--fake-features", str(feats["fake"]), "--json", str(a)],
               capsys)[0] == 0
    assert run(["metrics", "--real-features", str(feats["real"]), "--fake-features", str(feats["fake"]),
                "--metrics", "fid", "--json", str(b)], capsys)[0] == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert set(ra["metrics"]) == {"fid"}
    assert ra["metrics"]["fid"]["value"] == pytest.approx(rb["metrics"]["fid"]["value"], rel=1e-10)
    # a pytorch-fid file (mu and sigma only) is accepted, with a warning, for FID
    with np.load(stats) as z:
        np.savez(tmp_path / "ptfid.npz", mu=z["mu"], sigma=z["sigma"])
    c = tmp_path / "c.json"
    assert run(["metrics", "--real", str(tmp_path / "ptfid.npz"), "--fake-features", str(feats["fake"]),
                "--json", str(c)], capsys)[0] == 0
    rc = json.loads(c.read_text())
    assert rc["metrics"]["fid"]["value"] == pytest.approx(rb["metrics"]["fid"]["value"], rel=1e-10)
    assert rc["n_real"] is None
    assert any("no protocol fingerprint" in w for w in rc["warnings"])


def _stats_file(path: Path, protocol: str, seed: int) -> Path:
    from difflens.metrics.fingerprint import Fingerprint
    from difflens.metrics.stats import GaussianStats, save_stats

    feats = np.random.default_rng(seed).standard_normal((30, D))
    save_stats(path, GaussianStats.from_features(feats),
               Fingerprint(protocol=protocol, weights_sha256="c" * 64).to_dict())
    return path


def test_protocol_mismatch_refused_unless_allowed(tmp_path: Path, capsys) -> None:
    a = _stats_file(tmp_path / "a.npz", "tf-legacy", 1)
    b = _stats_file(tmp_path / "b.npz", "clean", 2)
    out = tmp_path / "m.json"
    code, _, err = run(["metrics", "--real", str(a), "--fake", str(b), "--json", str(out)], capsys)
    assert_bad(code, err, "different protocols", "protocol: 'tf-legacy' != 'clean'",
               "--allow-protocol-mismatch")
    assert not out.exists()
    code, _, err = run(["metrics", "--real", str(a), "--fake", str(b), "--json", str(out),
                        "--allow-protocol-mismatch"], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert any("different protocols" in w for w in res["warnings"])
    same = _stats_file(tmp_path / "c.npz", "tf-legacy", 3)
    code, _, err = run(["metrics", "--real", str(a), "--fake", str(same), "--json", str(out)], capsys)
    assert code == 0 and json.loads(out.read_text())["protocol"]["protocol"] == "tf-legacy"


@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    return d


def test_bad_inputs(feats: dict[str, Path], tmp_path: Path, two_images: Path, capsys,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "never.json"
    stats = _stats_file(tmp_path / "s.npz", "tf-legacy", 1)
    (tmp_path / "empty").mkdir()
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, D), np.float32))
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((10, D + 1), np.float32))
    r, f = str(feats["real"]), str(feats["fake"])
    cases = [
        (["--real", str(tmp_path / "nope"), "--fake-features", f], ["does not exist"]),
        (["--real", str(tmp_path / "empty"), "--fake-features", f], ["no image files"]),
        (["--real-features", r, "--fake-features", f, "--metrics", "fid,bogus"], ["unknown metric", "bogus"]),
        (["--real-features", r, "--fake-features", f, "--metrics", "is"], ["--metrics is", "fake images"]),
        (["--real", str(stats), "--fake-features", f, "--metrics", "kid"], ["--metrics kid", "statistics"]),
        (["--real-features", r, "--fake-features", str(wide)], ["feature dimensions differ", "16", "17"]),
        (["--real-features", r, "--fake-features", str(one)], ["at least 2"]),
        (["--real", str(stats), "--fake", str(two_images)], ["feature dimensions differ", "2048"]),
        (["--real-features", r, "--fake", str(two_images / "0.png")], ["1 sample", "at least 2"]),
        (["--real-features", r, "--fake-features", f, "--save-stats", str(tmp_path / "s2.npz")],
         ["--save-stats is ambiguous", "--save-real-stats"]),
        (["--real-features", r, "--save-stats", str(tmp_path / "s2.txt")], ["must end in .npz"]),
        (["--real-features", r, "--fake-features", f, "--json", str(tmp_path)], ["is a folder"]),
        (["--real-features", r, "--real", r], ["both --real and --real-features"]),
        (["--real-features", r, "--fake-features", f, "--batch-size", "0"], ["--batch-size"]),
        (["--real-features", r], ["no metric can be computed"]),
        ([], ["no input given"]),
    ]
    for extra, words in cases:
        argv = ["metrics", *extra]
        if "--json" not in extra:
            argv += ["--json", str(out)]
        code, _, err = run(argv, capsys)
        assert_bad(code, err, *words)
        assert not out.exists() and not (tmp_path / "s2.npz").exists()
    code, _, err = run(["metrics", "--real-features", r, "--bogus-flag", "1"], capsys)
    assert code == 2 and "No such option" in err
    # weights missing offline: says which file to put where, before reading any image
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("DIFFLENS_WEIGHTS_DIR", raising=False)
    code, _, err = run(["metrics", "--real", str(two_images), "--fake", str(two_images), "--offline",
                        "--json", str(out)], capsys)
    assert_bad(code, err, "weights-inception-2015-12-05-6726825d.pth", str(tmp_path / "th"))
    assert not out.exists()


def test_corrupt_images_skipped_or_strict(tmp_path: Path, two_images: Path, capsys,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    weights = random_weights(tmp_path_factory)
    (two_images / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    real = tmp_path / "real.npy"
    np.save(real, np.random.default_rng(0).standard_normal((6, 2048)).astype(np.float32))
    out = tmp_path / "m.json"
    base = ["metrics", "--real-features", str(real), "--fake", str(two_images), "--inception-weights",
            str(weights), "--device", "cpu", "--metrics", "fid,is", "--json", str(out)]
    code, _, err = run([*base, "--strict"], capsys)
    assert_bad(code, err, "zz_broken.png", "--strict")
    assert not out.exists()
    code, stdout, err = run(base, capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["n_fake"] == 2 and set(res["metrics"]) == {"fid", "is"}
    assert any("zz_broken.png" in w and "skipped 1" in w for w in res["warnings"])
    assert "RANDOM-INIT" in stdout and "WARNING" in stdout  # the prominent panel
    assert any("no protocol fingerprint" in w for w in res["warnings"])
