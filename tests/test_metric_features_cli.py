"""fd-clip, fd-<extractor>, sfid, fid-inf and vendi end to end through ``difflens metrics --metrics ...`` (the
generic route), on tiny random weights built here (Inception: torch-fidelity's network, random init; CLIP: a
tiny ``CLIPModel`` saved with ``save_pretrained``), offline. Each JSON value equals the metric class fed the
same extractor's features directly; the math itself is checked against the references in
test_metric_frechet.py, test_metric_fid_inf.py and test_metric_vendi.py. Same network, same images, but
batched differently by the CLI: 1e-6 relative, far above float32 batch-composition noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from difflens.errors import DifflensError
from difflens.metrics.base import FeatureBatch, create_metric

REL = 1e-6
N_REAL, N_FAKE = 6, 8


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from difflens.features.inception_weights import make_random_inception_weights

    path = tmp_path_factory.getbasetemp() / "inception-random-seed0" / "weights.pth"
    if not path.exists():  # the same file as test_metrics_cli's (one per session)
        path.parent.mkdir(parents=True, exist_ok=True)
        make_random_inception_weights(path, seed=0)
    return path


def _folder(root: Path, n: int, seed: int, shift: int) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    imgs = np.clip(rng.integers(0, 200, size=(n, 32, 32, 3)) + shift, 0, 255).astype(np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(root / f"{i:03d}.png")
    return root, imgs


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("sets")
    real, real_imgs = _folder(base / "real", N_REAL, 0, 0)
    fake, fake_imgs = _folder(base / "fake", N_FAKE, 1, 40)
    return {"real": real, "fake": fake, "real_imgs": real_imgs, "fake_imgs": fake_imgs, "base": base}


@pytest.fixture(scope="module")
def inception(weights: Path) -> Any:
    from difflens.features.inception import load_inception

    return load_inception(weights=str(weights), device="cpu", offline=True)


def _run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", *args, "--offline", "--json", str(out)], capsys)
    assert code == 0, err
    return json.loads(out.read_text())


def _direct(metric: Any, key: tuple[str, str], real: np.ndarray | None, fake: np.ndarray) -> Any:
    if real is not None:
        metric.update(FeatureBatch(True, {key: real}))
    metric.update(FeatureBatch(False, {key: fake}))
    return metric


@pytest.fixture(scope="module")
def inception_feats(sets: dict[str, Any], inception: Any) -> dict[str, dict[str, np.ndarray]]:
    return {"real": inception(sets["real_imgs"]), "fake": inception(sets["fake_imgs"])}


@pytest.fixture(scope="module")
def one_run(sets: dict[str, Any], weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """sfid, fid-inf and vendi in one ``difflens metrics`` run: one extraction pass per side."""
    from difflens.cli import main

    out = tmp_path_factory.mktemp("run") / "m.json"
    try:
        main(["metrics", "--real", str(sets["real"]), "--fake", str(sets["fake"]), "--metrics",
              "sfid,fid-inf,vendi", "--fid-inf-min-fake", "4", "--fid-inf-points", "3", "--seed", "3",
              "--vendi-q", "2", "--inception-weights", str(weights), "--offline", "--json", str(out)])
    except SystemExit as exc:  # the error line is in the captured stderr
        assert not exc.code, f"difflens metrics exited with {exc.code}"
    return json.loads(out.read_text())


def test_sfid_end_to_end(one_run: dict[str, Any], inception_feats: dict[str, Any]) -> None:
    entry = one_run["metrics"]["sfid"]
    r, f = inception_feats["real"]["spatial"], inception_feats["fake"]["spatial"]
    assert r.shape == (N_REAL, 2023)
    want = _direct(create_metric("sfid"), ("inception", "spatial"), r, f).compute()["sfid"].value
    assert entry["value"] == pytest.approx(want, rel=REL) and want > 0
    assert (entry["n_real"], entry["n_fake"]) == (N_REAL, N_FAKE)
    assert "mixed_6/conv" in one_run["protocol"]["features"]["sfid"]["extractors"]["inception"]["spatial"][
        "feature_layer"]


def test_sfid_real_side_from_adm_statistics(sets: dict[str, Any], weights: Path,
                                            inception_feats: dict[str, Any], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    r, f = inception_feats["real"]["spatial"], inception_feats["fake"]["spatial"]
    want = _direct(create_metric("sfid"), ("inception", "spatial"), r, f).compute()["sfid"].value
    stats = tmp_path / "ref_stats.npz"  # an ADM reference batch's statistics: mu/sigma (FID), mu_s/sigma_s
    r64 = r.astype(np.float64)
    np.savez(stats, mu=np.zeros(4), sigma=np.eye(4), mu_s=r64.mean(0), sigma_s=np.cov(r64, rowvar=False))
    res = _run(["--real", str(stats), "--fake", str(sets["fake"]), "--metrics", "sfid",
                "--inception-weights", str(weights)], tmp_path, capsys)
    # the covariance route (rank-truncated factors) instead of the features route: 1e-6 relative
    assert res["metrics"]["sfid"]["value"] == pytest.approx(want, rel=REL)
    assert res["metrics"]["sfid"]["n_real"] is None
    assert any("no protocol fingerprint" in w for w in res["warnings"])


def test_fid_inf_end_to_end(one_run: dict[str, Any], inception_feats: dict[str, Any]) -> None:
    entry = one_run["metrics"]["fid_inf"]
    r, f = inception_feats["real"]["pool3"], inception_feats["fake"]["pool3"]
    got = _direct(create_metric("fid-inf", min_fake=4, points=3, seed=3), ("inception", "pool3"), r,
                  f).compute()["fid_inf"]
    assert entry["sizes"] == [4, 6, N_FAKE] and entry["value"] == pytest.approx(got.value, rel=REL)
    np.testing.assert_allclose(entry["fids"], got.fields["fids"], rtol=REL)
    assert "residual_rms" in entry and "slope" in entry


def test_vendi_end_to_end(one_run: dict[str, Any], inception_feats: dict[str, Any]) -> None:
    from vendi_score import vendi

    entry = one_run["metrics"]["vendi"]
    f = inception_feats["fake"]["pool3"].astype(np.float64)
    assert entry["q"] == 2.0 and entry["n_fake"] == N_FAKE
    assert entry["value"] == pytest.approx(vendi.score_dual(f, q=2), rel=REL)
    assert 1.0 <= entry["value"] <= N_FAKE


def test_fid_inf_checks_the_counts_before_extraction() -> None:
    """The route can refuse too few generated images before any network runs (check_counts)."""
    with pytest.raises(DifflensError, match="more than 5000 generated images") as err:
        create_metric("fid-inf").check_counts(None, N_FAKE)
    assert "--fid-inf-min-fake" in (err.value.hint or "")
    create_metric("fid-inf", min_fake=4).check_counts(None, N_FAKE)
    create_metric("fid-inf").check_counts(None, None)  # count unknown (a stream): checked at compute


def test_fd_clip_end_to_end(sets: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from difflens.features.registry import get_extractor
    from difflens.tiny_encoders import save_tiny_clip

    clip_dir = save_tiny_clip(tmp_path / "clip")
    res = _run(["--real", str(sets["real"]), "--fake", str(sets["fake"]), "--metrics", "fd-clip",
                "--fd-clip-model", str(clip_dir)], tmp_path, capsys)
    ext = get_extractor(f"clip:{clip_dir}", device="cpu", offline=True)
    r, f = ext(sets["real_imgs"])["image_embeds"], ext(sets["fake_imgs"])["image_embeds"]
    want = _direct(create_metric("fd-clip", clip_model=str(clip_dir)), (f"clip:{clip_dir}", "image_embeds"),
                   r, f).compute()["fd_clip"].value
    assert res["metrics"]["fd_clip"]["value"] == pytest.approx(want, rel=REL) and want > 0
    assert res["protocol"]["features"]["fd-clip"]["settings"]["extractor"] == f"clip:{clip_dir}"


def test_fd_of_a_user_extractor_end_to_end(sets: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from difflens.features.registry import register_extractor, unregister_extractor
    from difflens.metrics import base
    from test_metric_frechet import ToyNet

    register_extractor("toy-net", ToyNet, overwrite=True)
    try:
        res = _run(["--real", str(sets["real"]), "--fake", str(sets["fake"]), "--metrics", "fd-toy-net"],
                   tmp_path, capsys)
    finally:
        unregister_extractor("toy-net")
        base._REGISTRY.pop("fd-toy-net", None)
    net = ToyNet()
    r, f = net(sets["real_imgs"])["feat"], net(sets["fake_imgs"])["feat"]
    want = _direct(create_metric("fid"), ("inception", "pool3"), r, f).compute()["fid"].value  # same formula
    assert res["metrics"]["fd_toy_net"]["value"] == pytest.approx(want, rel=REL)
