"""FID-infinity (difflens.metrics.fid_inf) against the procedure of mchong6/FID_IS_infinity score_infinity.py
(``calculate_FID_infinity_path``, lines 117-171), re-stated here independently: sizes by ``np.linspace(min,
N, points).astype('int32')`` (line 155), the fake activations shuffled in place by the global numpy generator
before each size and the first ``size`` rows taken (lines 160-161), FID by ``np.cov`` and a ``sqrtm`` FID
(clean-fid's ``frechet_distance``, the same Sutherland formula as the reference's
``numpy_calculate_frechet_distance``), and scikit-learn's ``LinearRegression`` on 1/size (lines 168-169).
Seeding the global generator with the metric's seed gives the same subsets (RandomState.shuffle is the
algorithm behind np.random.shuffle). The FIDs come from different trace algorithms (eigvalsh vs sqrtm):
1e-7 relative, far above float64 rounding here, far below any real change.
"""

from __future__ import annotations

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.base import FeatureBatch, create_metric
from difflens.metrics.fid_inf import line_fit

KEY = ("inception", "pool3")


def _reference(real: np.ndarray, fake: np.ndarray, min_fake: int, points: int,
               seed: int) -> tuple[float, list]:
    from cleanfid.fid import frechet_distance
    from sklearn.linear_model import LinearRegression

    r = real.astype(np.float64)
    mu_r, sig_r = r.mean(0), np.cov(r, rowvar=False)
    act = fake.copy()
    sizes = np.linspace(min_fake, len(act), points).astype("int32")
    np.random.seed(seed)
    fids = []
    for size in sizes:
        np.random.shuffle(act)
        sub = act[:size].astype(np.float64)
        fids.append(frechet_distance(sub.mean(0), np.cov(sub, rowvar=False), mu_r, sig_r))
    reg = LinearRegression().fit(1 / sizes.reshape(-1, 1), np.array(fids).reshape(-1, 1))
    return float(reg.predict(np.array([[0]]))[0, 0]), fids


def _data(seed: int = 0, n_real: int = 900, n_fake: int = 800,
          dim: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, dim)).astype(np.float32)
    fake = (rng.normal(size=(n_fake, dim)) * 1.1 + 0.2).astype(np.float32)
    return real, fake


def _feed(metric, real, fake, batch=100):
    for s in range(0, len(real), batch):
        metric.update(FeatureBatch(True, {KEY: real[s:s + batch]}))
    for s in range(0, len(fake), batch):
        metric.update(FeatureBatch(False, {KEY: fake[s:s + batch]}))
    return metric


@pytest.mark.parametrize(("min_fake", "points", "seed"), [(100, 15, 2020), (300, 5, 7)])
def test_fid_inf_equals_the_reference_procedure(min_fake: int, points: int, seed: int) -> None:
    real, fake = _data()
    m = _feed(create_metric("fid-inf", min_fake=min_fake, points=points, seed=seed), real, fake)
    res = m.compute()["fid_inf"]
    want, fids = _reference(real, fake, min_fake, points, seed)
    np.testing.assert_allclose(res.fields["fids"], fids, rtol=1e-7)
    assert res.value == pytest.approx(want, rel=1e-7)
    assert res.fields["sizes"][0] == min_fake and res.fields["sizes"][-1] == len(fake)
    assert len(res.fields["sizes"]) == points
    assert res.counts == {"n_real": len(real), "n_fake": len(fake)}
    a, b, rms = line_fit(np.array(res.fields["sizes"]), np.array(res.fields["fids"]))
    assert (a, b, rms) == (res.value, res.fields["slope"], res.fields["residual_rms"])


def test_line_fit_recovers_a_line_and_reports_the_residual() -> None:
    sizes = np.array([100, 200, 400, 800])
    a, b, rms = line_fit(sizes, 3.0 + 250.0 / sizes)
    assert a == pytest.approx(3.0, rel=1e-12) and b == pytest.approx(250.0, rel=1e-12) and rms < 1e-12
    bumped = 3.0 + 250.0 / sizes + np.array([0.1, -0.1, -0.1, 0.1])
    a, b, rms = line_fit(sizes, bumped)
    x = 1.0 / sizes
    resid = bumped - (a + b * x)
    assert rms == pytest.approx(np.sqrt(np.mean(resid ** 2)))
    assert rms > 0.05
    assert abs(resid @ x) < 1e-9 and abs(resid.sum()) < 1e-9  # least-squares normal equations


def test_fid_inf_real_side_from_statistics() -> None:
    real, fake = _data(seed=3)
    rows = _feed(create_metric("fid-inf", min_fake=200, points=4), real, fake).compute()["fid_inf"].value
    m = create_metric("fid-inf", min_fake=200, points=4)
    r = real.astype(np.float64)
    m.load_side_stats(True, {"mu": r.mean(0), "sigma": np.cov(r, rowvar=False)}, None)
    _feed(m, real[:0], fake)
    assert m.compute()["fid_inf"].value == pytest.approx(rows, rel=1e-10)
    with pytest.raises(DifflensError, match="cannot be statistics"):
        m.load_side_stats(False, {"mu": r.mean(0), "sigma": np.eye(10)}, None)


def test_too_few_generated_images_is_one_clear_error() -> None:
    real, fake = _data(n_fake=50)
    m = _feed(create_metric("fid-inf"), real, fake)  # default min_fake 5000
    with pytest.raises(DifflensError, match="more than 5000 generated images") as err:
        m.compute()
    assert "min_fake" in (err.value.hint or "")
    with pytest.raises(DifflensError, match="at least 2 sample sizes"):
        create_metric("fid-inf", points=1)


@pytest.mark.parametrize("n_real", [15, 400])  # singular and positive definite real covariance
def test_subset_route_equals_the_fid_value_function(n_real: int) -> None:
    """The subsets' FIDs reuse one factor of the real covariance; they equal FID's own value function
    (difflens.metrics.values._fid_value via frechet_value) for subsets below and above the dimension.
    Different eigenproblems of the same matrices: 1e-9 relative."""
    from difflens.metrics.fid_inf import RealSide
    from difflens.metrics.frechet import frechet_value
    from difflens.metrics.stats import GaussianStats

    real, fake = _data(seed=21, n_real=n_real, n_fake=300, dim=24)
    rs = GaussianStats.from_features(real.astype(np.float64))
    side = RealSide(rs)
    for n in (8, 24, 25, 300):
        sub = fake[:n].astype(np.float64)
        want = frechet_value(rs, GaussianStats.from_features(sub), None, None)
        assert side.fid(sub) == pytest.approx(want, rel=1e-9, abs=1e-12), n
