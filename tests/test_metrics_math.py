"""Metric math: Gaussian statistics, FID, KID, IS, exact k-NN precision/recall/density/coverage,
bootstrap helpers -- properties and agreement with torch-fidelity, prdc and scipy on synthetic features."""

from __future__ import annotations

import inspect
import itertools
import json

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics import bootstrap as bs
from difflens.metrics.fid import (
    fid_from_stats,
    frechet_distance,
    trace_sqrt_product,
    trace_sqrt_product_from_features,
)
from difflens.metrics.inception_score import inception_score
from difflens.metrics.kid import kernel_inception_distance
from difflens.metrics.knn import knn_radii, knn_radii_many, prdc
from difflens.metrics.stats import GaussianStats, load_stats, save_stats, stats_from_mu_sigma

_BASIS = np.random.default_rng(1234).normal(size=(8, 64))


def feats(n: int, seed: int, scale: float = 1.0, shift: float = 0.0, d: int = 64) -> np.ndarray:
    """Inception-like features: non-negative, low-rank structure plus noise, float32."""
    g = np.random.default_rng(seed)
    basis = _BASIS[:, :d] if d <= 64 else np.random.default_rng(99).normal(size=(8, d))
    z = (g.normal(size=(n, 8)) @ basis) * scale + 0.5 * g.normal(size=(n, d)) + 3.0 + shift
    return np.maximum(z, 0.0).astype(np.float32)


def brute_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """Reference by definition, all distances in float64 by differences."""
    r, f = real.astype(np.float64), fake.astype(np.float64)

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(np.stack([np.einsum("ij,ij->i", a - row, a - row) for row in b], axis=1))

    drr, dff, drf = dist(r, r), dist(f, f), dist(r, f)
    rr_pr = np.sort(drr, axis=1)[:, k_pr]
    rr_dc = np.sort(drr, axis=1)[:, k_dc]
    rf_pr = np.sort(dff, axis=1)[:, k_pr]
    return {
        "precision": float((drf <= rr_pr[:, None]).any(axis=0).mean()),
        "recall": float((drf <= rf_pr[None, :]).any(axis=1).mean()),
        "density": float((1.0 / k_dc) * (drf < rr_dc[:, None]).sum(axis=0).mean()),
        "coverage": float((drf.min(axis=1) < rr_dc).mean()),
    }


def _near_ties(real: np.ndarray, fake: np.ndarray, rel: float, k_pr: int = 3,
               k_dc: int = 5) -> dict[str, int]:
    """Per metric, how many of its counted events (a sample in or out, a pair within a radius) are decided
    by a distance within ``rel`` (relative) of its radius, in exact float64 distances: the most that a
    reference computing distances in lower precision can count differently."""
    r, f = real.astype(np.float64), fake.astype(np.float64)

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(np.stack([np.einsum("ij,ij->i", a - row, a - row) for row in b], axis=1))

    drr, dff, drf = dist(r, r), dist(f, f), dist(r, f)
    rr_pr, rr_dc = np.sort(drr, axis=1)[:, k_pr], np.sort(drr, axis=1)[:, k_dc]
    rf_pr = np.sort(dff, axis=1)[:, k_pr]

    def unsure(d: np.ndarray, radius: np.ndarray, axis: int) -> int:  # "within some radius" may flip
        surely_in = (d <= radius * (1 - rel)).any(axis=axis)
        surely_out = (d > radius * (1 + rel)).all(axis=axis)
        return int((~surely_in & ~surely_out).sum())

    return {"precision": unsure(drf, rr_pr[:, None], 0), "recall": unsure(drf, rf_pr[None, :], 1),
            "density": int((np.abs(drf - rr_dc[:, None]) <= rel * rr_dc[:, None]).sum()),
            "coverage": int((np.abs(drf.min(axis=1) - rr_dc) <= rel * rr_dc).sum())}


# ------------------------------------------------------------------------------------------- statistics

def test_shards_batches_and_permutation_give_one_pass_stats() -> None:
    x = feats(1100, 0).astype(np.float64) * 7.0 + 100.0   # large offset: a naive sum would lose digits
    whole = GaussianStats.from_features(x)
    assert whole.n == 1100 and whole.dim == 64
    np.testing.assert_allclose(whole.covariance(), np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole.mean, x.mean(axis=0), rtol=1e-14)

    cuts = [0, 1, 7, 300, 301, 950, 1100]
    shards = [GaussianStats.from_features(x[a:b]) for a, b in itertools.pairwise(cuts)]
    merged = GaussianStats.empty(64)
    for s in reversed(shards):
        merged = merged.merge(s)
    nested = shards[2].merge(shards[3].merge(shards[4]))
    pairwise = (shards[0].merge(shards[1])).merge(nested).merge(shards[5])
    batched = GaussianStats.empty(64)
    for start in range(0, 1100, 37):
        before = batched
        batched = batched.update(x[start:start + 37])
        assert before.n == start  # update returns a new object, the old one is untouched
    perm = GaussianStats.from_features(x[np.random.default_rng(3).permutation(1100)])
    for other in (merged, pairwise, batched, perm):
        assert other.n == whole.n
        np.testing.assert_allclose(other.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(other.m2, whole.m2, rtol=1e-12, atol=1e-9)
        assert abs(fid_from_stats(other, whole)) < 1e-8


def test_stats_bad_input_is_a_clear_error() -> None:
    one = GaussianStats.from_features(feats(1, 0))
    with pytest.raises(DifflensError, match="at least 2 samples"):
        one.covariance()
    with pytest.raises(DifflensError, match="at least 2 samples"):
        fid_from_stats(one, GaussianStats.from_features(feats(10, 0)))
    with pytest.raises(DifflensError, match="dimension mismatch"):
        GaussianStats.empty(64).merge(GaussianStats.empty(32))
    with pytest.raises(DifflensError, match="dimension mismatch"):
        GaussianStats.from_features(feats(10, 0)).update(feats(10, 1, d=32))
    with pytest.raises(DifflensError, match="2-D"):
        GaussianStats.from_features(np.zeros(5))
    bad = feats(10, 0)
    bad[3, 4] = np.nan
    with pytest.raises(DifflensError, match="NaN"):
        GaussianStats.from_features(bad)
    unknown = stats_from_mu_sigma(np.zeros(4), np.eye(4), None)
    with pytest.raises(DifflensError, match="unknown"):
        unknown.merge(GaussianStats.from_features(np.ones((3, 4))))


def test_save_load_round_trip_and_pytorch_fid_files(tmp_path) -> None:
    x = feats(400, 5)
    st = GaussianStats.from_features(x)
    fp = {"extractor": "inception-v3-compat", "protocol": "tf-legacy", "weights_sha256": "ab" * 32}
    path = tmp_path / "ref.npz"
    save_stats(path, st, fp, extra={"features": x})
    back, fp_back, extra = load_stats(path)
    assert fp_back == fp and back.n == 400
    np.testing.assert_array_equal(back.mean, st.mean)
    np.testing.assert_allclose(back.m2, st.m2, rtol=1e-14, atol=1e-12)
    np.testing.assert_array_equal(extra["features"], x)
    with np.load(path, allow_pickle=False) as raw:      # pytorch-fid readers need only these two keys
        np.testing.assert_allclose(raw["sigma"], np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
        assert json.loads(str(raw["fingerprint"])) == fp

    # a pytorch-fid file: mu and sigma only
    other = feats(300, 6, shift=0.3)
    pf = tmp_path / "pytorch_fid.npz"
    np.savez(pf, mu=other.mean(axis=0), sigma=np.cov(other, rowvar=False))
    st2, fp2, extra2 = load_stats(pf)
    assert st2.n == -1 and fp2 is None and extra2 == {}
    np.testing.assert_array_equal(st2.covariance(), np.cov(other, rowvar=False))
    expect = fid_from_stats(st, GaussianStats.from_features(other))
    assert fid_from_stats(st, st2) == pytest.approx(expect, rel=1e-6)

    # bad files and bad saves: clear errors, nothing written
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3))
    with pytest.raises(DifflensError, match="lacks sigma"):
        load_stats(bad)
    with pytest.raises(DifflensError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DifflensError, match=r"is a text file, not an \.npz"):
        load_stats(tmp_path / "junk.npz")
    with pytest.raises(DifflensError, match="reserved"):
        save_stats(tmp_path / "clash.npz", st, fp, extra={"mu": np.zeros(2)})
    with pytest.raises(DifflensError, match="at least 2"):
        save_stats(tmp_path / "one.npz", GaussianStats.from_features(x[:1]), fp)
    assert not (tmp_path / "clash.npz").exists() and not (tmp_path / "one.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "junk.npz", "pytorch_fid.npz", "ref.npz"]


# ------------------------------------------------------------------------------------------------- FID

@pytest.mark.parametrize("dim", [16, 64])
def test_trace_term_equals_scipy_sqrtm(dim: int) -> None:
    import scipy.linalg

    a = feats(400, 1, d=dim).astype(np.float64)
    b = feats(300, 2, scale=1.3, d=dim).astype(np.float64)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-8)
    assert trace_sqrt_product(s2, s1) == pytest.approx(ref, rel=1e-8)
    # singular S1 (rank 10 < D): the Cholesky route fails over to eigh; equals the feature (nuclear) route
    c = feats(11, 3, d=dim).astype(np.float64)
    s3 = np.cov(c, rowvar=False)
    assert trace_sqrt_product(s3, s2) == pytest.approx(trace_sqrt_product_from_features(c, b), rel=1e-8)
    assert trace_sqrt_product_from_features(a, b) == pytest.approx(ref, rel=1e-8)


def test_fid_equals_torch_fidelity() -> None:
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    real, fake = feats(900, 10), feats(700, 11, scale=1.2, shift=0.2)
    ref = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(real)),
                                   fid_features_to_statistics(torch.from_numpy(fake)), verbose=False)
    ref = ref["frechet_inception_distance"]
    mine = fid_from_stats(GaussianStats.from_features(real), GaussianStats.from_features(fake))
    assert ref > 1.0
    assert mine == pytest.approx(ref, rel=1e-6)
    s = GaussianStats.from_features(real)
    assert frechet_distance(s.mean, s.covariance(), s.mean, s.covariance()) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(DifflensError, match="dimension mismatch"):
        fid_from_stats(s, GaussianStats.from_features(feats(50, 1, d=32)))


# ------------------------------------------------------------------------------------------ KID and IS

def test_kid_equals_torch_fidelity() -> None:
    import torch
    from torch_fidelity.defaults import DEFAULTS as tf_defaults
    from torch_fidelity.metric_kid import kid_features_to_metric

    # the defaults are torch-fidelity's: 100 subsets of 1000, seed 2020
    defaults = inspect.signature(kernel_inception_distance).parameters
    assert (defaults["num_subsets"].default, defaults["subset_size"].default, defaults["seed"].default) == (
        tf_defaults["kid_subsets"], tf_defaults["kid_subset_size"], tf_defaults["rng_seed"])
    real, fake = feats(700, 20), feats(600, 21, scale=1.1, shift=0.05)
    res = kernel_inception_distance(real, fake, num_subsets=30, subset_size=500)
    ref = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=30,
                                 kid_subset_size=500, verbose=False)
    assert (res.subset_size, res.num_subsets, res.warnings) == (500, 30, [])
    assert res.value == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert res.std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-3)
    assert res.value > 10 * res.std / 10 ** 0.5 > 0                    # a real, measurable difference

    small = kernel_inception_distance(real[:150], fake, num_subsets=7, subset_size=1000, seed=5)
    ref = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real[:150]), kid_subsets=7,
                                 kid_subset_size=150, rng_seed=5, verbose=False)
    assert small.subset_size == 150 and len(small.warnings) == 1 and "150" in small.warnings[0]
    assert small.value == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    with pytest.raises(DifflensError, match="dimension mismatch"):
        kernel_inception_distance(real, feats(100, 1, d=32))


def test_inception_score_equals_torch_fidelity() -> None:
    import torch
    from torch_fidelity.metric_isc import isc_features_to_metric

    g = np.random.default_rng(7)
    logits = (g.normal(size=(1003, 1008)) * 3.0 + g.normal(size=(1, 1008)) * 2.0).astype(np.float32)
    mean, std = inception_score(logits)
    ref = isc_features_to_metric(torch.from_numpy(logits))
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8)
    mean5, _ = inception_score(logits, splits=5, seed=11)
    ref5 = isc_features_to_metric(torch.from_numpy(logits), splits=5, rng_seed=11)
    assert mean5 == pytest.approx(ref5["inception_score_mean"], rel=1e-10)
    with pytest.raises(DifflensError, match="at least 10 samples"):
        inception_score(logits[:5])


# ------------------------------------------------------------------------------------------------ k-NN

def test_prdc_equals_torch_fidelity_and_prdc_exactly() -> None:
    import prdc as prdc_lib
    import torch
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = feats(1000, 30), feats(800, 31, scale=1.15, shift=0.1)
    mine = prdc(real, fake, block_size=128)
    ref = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    # The references are not exact: torch-fidelity compares float32 cdist values (about 1e-6 relative
    # error), prdc float64 distances rounded to float32, and how they round depends on the CPU's kernels. A
    # decision within 1e-5 of its threshold (in exact distances) may go either way, so the counts must agree
    # except for such near-ties, which are counted here and kept rare; difflens itself is exact (brute force
    # below). torch-fidelity returns float32 means: compare the counts.
    ties = _near_ties(real, fake, rel=1e-5)
    assert sum(ties.values()) <= 3, ties  # the allowance never swallows the comparison
    assert abs(round(mine["precision"] * 800) - round(ref["precision"] * 800)) <= ties["precision"]
    assert abs(round(mine["recall"] * 1000) - round(ref["recall"] * 1000)) <= ties["recall"]
    ref_dc = prdc_lib.compute_prdc(real, fake, nearest_k=5)
    assert abs(mine["density"] - ref_dc["density"]) * 5 * 800 <= ties["density"] + 1e-6
    assert abs(mine["coverage"] - ref_dc["coverage"]) * 1000 <= ties["coverage"] + 1e-6
    assert 0.2 < mine["precision"] < 0.98 and 0.2 < mine["recall"] < 0.98      # not a degenerate case
    assert mine == brute_prdc(real, fake)


def test_prdc_exact_with_duplicates_float64_and_any_block_size() -> None:
    real, fake = feats(300, 40), feats(240, 41, scale=1.1)
    idx = np.random.default_rng(2).integers(0, 240, 240)
    fake_b = fake[idx].copy()            # bootstrap-style duplicates
    fake_b[:20] = real[:20]               # exact copies of real samples (distance 0)
    real_b = real.copy()
    real_b[50:58] = real_b[50]            # 8 copies: radius exactly 0
    expect = brute_prdc(real_b, fake_b)
    for block in (7, 64, 300, 4096):
        assert prdc(real_b, fake_b, block_size=block) == expect
    assert prdc(real_b.astype(np.float64), fake_b.astype(np.float64), block_size=50) == expect
    assert prdc(real_b, fake_b, k_pr=5, k_dc=2) == brute_prdc(real_b, fake_b, k_pr=5, k_dc=2)
    only = prdc(real_b, fake_b, metrics=("coverage", "recall"), block_size=64)
    assert only == {"coverage": expect["coverage"], "recall": expect["recall"]}


def test_knn_radii_and_shared_real_radii() -> None:
    real, fake = feats(500, 50), feats(400, 51, shift=0.2)
    r = real.astype(np.float64)
    d = np.sqrt(np.stack([np.einsum("ij,ij->i", r - row, r - row) for row in r], axis=1))
    srt = np.sort(d, axis=1)
    for k in (1, 3, 5):
        np.testing.assert_array_equal(knn_radii(real, k, block_size=77), srt[:, k])
    many = knn_radii_many(real, [3, 5], block_size=200)
    np.testing.assert_array_equal(many[5], srt[:, 5])
    assert prdc(real, fake, real_radii=many) == prdc(real, fake)
    with pytest.raises(DifflensError, match="at least 4"):
        knn_radii(real[:3], 3)
    with pytest.raises(DifflensError, match="dimension mismatch"):
        prdc(real, feats(50, 1, d=32))
    with pytest.raises(DifflensError, match="Unknown k-NN metrics"):
        prdc(real, fake, metrics=("precision", "f1"))
    with pytest.raises(DifflensError, match="expected"):
        prdc(real, fake, real_radii={3: np.ones(10), 5: np.ones(10)})


def test_torch_backend_gives_the_same_exact_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch code path (used for CUDA) run on the CPU: same exact answers."""
    from difflens.metrics import knn

    real, fake = feats(300, 42), feats(240, 43, scale=1.1)
    fake[:15] = real[:15]
    expect = brute_prdc(real, fake)
    monkeypatch.setattr(knn.backend, "ops_for", lambda device: knn.backend.TorchOps("cpu"))
    assert prdc(real, fake, block_size=64) == expect
    assert bs.bootstrap_prdc(real, fake, 2, seed=1, block_size=100)["recall"].shape == (2,)


# ------------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_helpers_equal_recomputation_on_resamples() -> None:
    real, fake = feats(200, 60), feats(150, 61, scale=1.2)
    idx = list(bs.bootstrap_indices(150, 3, seed=9))
    assert [len(i) for i in idx] == [150] * 3
    assert all(np.array_equal(a, b) for a, b in zip(idx, bs.bootstrap_indices(150, 3, seed=9), strict=True))
    np.testing.assert_array_equal(bs.bootstrap_counts(150, 3, 9)[1], np.bincount(idx[1], minlength=150))

    rs = GaussianStats.from_features(real)
    fids = bs.bootstrap_fid(rs, fake, 3, seed=9)
    fids_small = bs.bootstrap_fid(rs, fake[:40], 2, seed=9)          # M < D: the M x M route
    for b, i in enumerate(idx):
        direct = GaussianStats.from_features(fake[i])
        w = bs.resampled_stats(fake, i)
        np.testing.assert_allclose(w.m2, direct.m2, rtol=1e-10, atol=1e-8)
        assert fids[b] == pytest.approx(fid_from_stats(rs, direct), rel=1e-9)
    for b, i in enumerate(bs.bootstrap_indices(40, 2, seed=9)):
        assert fids_small[b] == pytest.approx(fid_from_stats(rs, GaussianStats.from_features(fake[:40][i])),
                                              rel=1e-9)

    kids = bs.bootstrap_kid(real, fake, 3, seed=9, block_size=64)
    for b, i in enumerate(idx):
        x, y = real.astype(np.float64), fake[i].astype(np.float64)
        kxx, kyy, kxy = ((a @ c.T / 64 + 1) ** 3 for a, c in ((x, x), (y, y), (x, y)))
        ref = ((kxx.sum() - np.trace(kxx)) / (200 * 199) + (kyy.sum() - np.trace(kyy)) / (150 * 149)
               - 2 * kxy.mean())
        assert kids[b] == pytest.approx(ref, rel=1e-5, abs=1e-7)

    pr = bs.bootstrap_prdc(real, fake, 2, seed=9, block_size=64)
    for b, i in enumerate(idx[:2]):
        assert {key: v[b] for key, v in pr.items()} == brute_prdc(real, fake[i])

    vals = np.random.default_rng(0).normal(size=200)
    assert bs.percentile_interval(vals) == tuple(np.percentile(vals, [2.5, 97.5]))
    with pytest.raises(DifflensError, match="No bootstrap values"):
        bs.percentile_interval([])


@pytest.mark.parametrize("shallow", [False, True])
def test_prdc_bootstrap_in_one_pass_equals_recomputation(monkeypatch: pytest.MonkeyPatch,
                                                          shallow: bool) -> None:
    from difflens.metrics import knn

    if shallow:  # lists too short: exercises the exact full-row fallbacks
        monkeypatch.setattr(knn.bootstrap, "BOOT_DEPTH", 0)
        monkeypatch.setattr(knn.radii, "SLACK", 0)
    real, fake = feats(260, 70), feats(200, 71, scale=1.1, shift=0.05)
    fake[:12] = real[:12]
    point, boot = bs.prdc_with_bootstrap(real, fake, 12, seed=4, block_size=64)
    assert point == prdc(real, fake, block_size=64)
    for b, idx in enumerate(bs.bootstrap_indices(200, 12, seed=4)):
        assert {key: v[b] for key, v in boot.items()} == prdc(real, fake[idx], block_size=64)
    only, boot_r = bs.prdc_with_bootstrap(real, fake, 3, seed=4, metrics=("recall",))
    assert only == {"recall": point["recall"]} and np.array_equal(boot_r["recall"], boot["recall"][:3])
