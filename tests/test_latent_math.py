"""Latent mode: the math on synthetic tensors (no pipelines)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflens.errors import DifflensError
from difflens.latent import interpolate as itp
from difflens.latent import ood as od
from difflens.latent.direction import parse_scales
from difflens.latent.images import load_images, resize_center_crop


def _equal_norm_pair(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, 4, d, d, generator=g, dtype=torch.float64)
    b = torch.randn(1, 4, d, d, generator=g, dtype=torch.float64)
    return a, b * (a.norm() / b.norm())


def test_slerp_keeps_the_norm_of_equal_norm_endpoints() -> None:
    a, b = _equal_norm_pair(16)
    for t in (0.1, 0.25, 0.5, 0.9):
        s = itp.slerp(a, b, t)
        assert float(s.norm()) == pytest.approx(float(a.norm()), rel=1e-12)
    # lerp does not: the midpoint of near-orthogonal equal-norm vectors has norm ~ |a| / sqrt(2)
    mid = itp.lerp(a, b, 0.5)
    assert float(mid.norm()) < 0.8 * float(a.norm())


def test_slerp_endpoints_are_exact() -> None:
    a, b = _equal_norm_pair(8, seed=3)
    assert torch.equal(itp.slerp(a, b, 0.0), a)
    assert torch.equal(itp.slerp(a, b, 1.0), b)


def test_slerp_matches_lerp_when_the_angle_is_tiny() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(512, generator=g, dtype=torch.float64)
    perp = torch.randn(512, generator=g, dtype=torch.float64)
    perp -= perp.dot(a) / a.dot(a) * a
    angle = 1e-4  # far above the degenerate-case fallback, so the sin formula itself is exercised
    b = math.cos(angle) * a + math.sin(angle) * perp / perp.norm() * a.norm()
    for t in (0.2, 0.5, 0.8):
        torch.testing.assert_close(itp.slerp(a, b, t), itp.lerp(a, b, t), rtol=1e-9, atol=1e-9)
    # a large angle gives a clearly different point
    c = -a + 0.5 * perp
    assert float((itp.slerp(a, c, 0.5) - itp.lerp(a, c, 0.5)).norm()) > 1.0


def test_latent_norm_z_matches_the_definition_and_flags_lerp_midpoints() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 64, 64, generator=g), torch.randn(4, 64, 64, generator=g)
    d = a.numel()
    assert itp.latent_norm_z(a) == pytest.approx((float(a.double().norm()) - math.sqrt(d)) / math.sqrt(0.5))
    assert abs(itp.latent_norm_z(a)) < 4
    assert abs(itp.latent_norm_z(itp.slerp(a, b, 0.5))) < 4
    # lerp midpoint: norm ~ sqrt(d/2) = 90.5 vs sqrt(d) = 128 -> z ~ -53
    assert itp.latent_norm_z(itp.lerp(a, b, 0.5)) < -40


def test_smoothness_summary_locates_the_jump() -> None:
    feats = np.array([[0.0], [1.0], [2.0], [7.0], [8.0]])
    s = itp.smoothness_summary(feats)
    np.testing.assert_allclose(itp.step_distances(feats), [1, 1, 5, 1])
    assert s["largest_jump_frame"] == 3
    assert s["max_step"] == 5 and s["mean_step"] == 2
    assert s["max_over_mean"] == pytest.approx(2.5)
    assert s["path_length"] == 8 and s["endpoint_distance"] == 8 and s["path_efficiency"] == 1


def test_fewer_than_two_frames_is_an_error() -> None:
    with pytest.raises(DifflensError, match="at least 2 frames"):
        itp.frame_times(1)
    assert itp.frame_times(3) == [0.0, 0.5, 1.0]


def test_scales_must_be_numbers() -> None:
    assert parse_scales("-2,-1,0,1.5,2") == [-2.0, -1.0, 0.0, 1.5, 2.0]
    for bad in ("1,x,2", "", "1,nan", "inf"):
        with pytest.raises(DifflensError):
            parse_scales(bad)


def test_diagonal_gaussian_merges_batches_exactly() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(37, 5, 3))
    merged = od.DiagonalGaussian()
    for chunk in (x[:5], x[5:6], x[6:30], x[30:]):
        merged.update(chunk)
    flat = x.reshape(37, -1)
    np.testing.assert_allclose(merged.mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.std, flat.std(0, ddof=1), rtol=1e-12)
    y = rng.normal(size=(4, 5, 3))
    expected = np.sqrt((((y.reshape(4, -1) - flat.mean(0)) / flat.std(0, ddof=1)) ** 2).mean(1))
    np.testing.assert_allclose(od.latent_zscore_scores(x, y), expected, rtol=1e-12)


def test_mahalanobis_uses_ledoit_wolf_and_reconstruction_zscores_per_level() -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 8))
    test = rng.normal(size=(6, 8)) + np.arange(6)[:, None]
    expected = np.sqrt(LedoitWolf().fit(ref).mahalanobis(test))
    np.testing.assert_allclose(od.mahalanobis_scores(ref, test), expected, rtol=1e-10)
    assert np.all(np.diff(od.mahalanobis_scores(ref, test)[1:]) > 0)  # farther shifts score higher

    ref_err = rng.uniform(0.01, 0.02, size=(20, 3)) * np.array([1.0, 2.0, 4.0])
    err = np.array([[0.015, 0.03, 0.06], [0.05, 0.1, 0.2]])
    z = (err - ref_err.mean(0)) / ref_err.std(0, ddof=1)
    np.testing.assert_allclose(od.reconstruction_scores(ref_err, err), z.mean(1), rtol=1e-12)


def _fpr95_bruteforce(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 1.0
    for thr in np.unique(scores):
        tpr = np.mean(scores[labels == 1] >= thr)
        fpr = np.mean(scores[labels == 0] >= thr)
        if tpr >= 0.95:
            best = min(best, fpr)
    return float(best)


def test_ood_metrics_equal_scikit_learn_including_ties() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(2)
    for trial in range(20):
        n0, n1 = rng.integers(5, 40, size=2)
        labels = np.array([0] * n0 + [1] * n1)
        scores = np.round(np.concatenate([rng.normal(0, 1, n0), rng.normal(1, 1, n1)]), 1)  # ties
        m = od.ood_metrics(labels, scores)
        assert m["auroc"] == roc_auc_score(labels, scores)
        assert m["aupr"] == average_precision_score(labels, scores)
        assert m["fpr95"] == pytest.approx(_fpr95_bruteforce(labels, scores), abs=1e-15), trial
    assert od.ood_metrics([0, 0, 0], [1.0, 2.0, 3.0]) == {"auroc": None, "aupr": None, "fpr95": None}


def test_reference_count_rules_and_option_parsing() -> None:
    with pytest.raises(DifflensError, match="only 3 reference images"):
        od.check_reference_count(3)
    assert "fewer than 100" in od.check_reference_count(40)
    assert od.check_reference_count(100) is None
    assert od.parse_methods("mahalanobis,latent-zscore") == ["mahalanobis", "latent-zscore"]
    with pytest.raises(DifflensError, match="unknown OOD method"):
        od.parse_methods("mahalanobis,knn")
    assert od.parse_levels("0.5,0.25", steps=4) == [0.25, 0.5]
    for bad in ("0.5,x", "1.5", "0", "0.1"):  # 0.1 * 4 steps re-runs no step
        with pytest.raises(DifflensError):
            od.parse_levels(bad, steps=4)


def test_resize_rule_shorter_side_then_center_crop(tmp_path) -> None:
    from PIL import Image

    # a wide image: left third red, middle blue, right third green -> the center crop is blue
    arr = np.zeros((40, 120, 3), dtype=np.uint8)
    arr[:, :40, 0] = 255
    arr[:, 40:80, 2] = 255
    arr[:, 80:, 1] = 255
    out = np.asarray(resize_center_crop(Image.fromarray(arr), 16))
    assert out.shape == (16, 16, 3)
    assert out[:, 3:13, 2].min() > 200 and out[:, 3:13, :2].max() < 60
    # mixed sizes and modes in one folder all come out at the model size
    Image.fromarray(arr).save(tmp_path / "wide.png")
    Image.fromarray(np.full((50, 30), 128, np.uint8)).save(tmp_path / "tall_gray.png")
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(tmp_path / "exact.jpg")
    files, batch = load_images([tmp_path], 16)
    assert [f.name for f in files] == ["exact.jpg", "tall_gray.png", "wide.png"]
    assert tuple(batch.shape) == (3, 3, 16, 16)
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DifflensError, match="cannot read image"):
        load_images([tmp_path], 16)
