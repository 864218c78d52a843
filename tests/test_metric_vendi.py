"""Vendi score (difflens.metrics.vendi) against the vendi-score package (vertaix/Vendi-Score 0.0.3,
``vendi_score.vendi``) on the same features, several orders q.

The package's ``score_K`` takes the n x n cosine kernel (rows normalized by scikit-learn) and its
eigenvalues; difflens takes the D x D Gram of the normalized rows (the package's ``score_dual``), whose
nonzero eigenvalues are the same. Different eigenproblems: agreement to 1e-7 relative, far above float64
rounding (eigenvalues below rounding level count as zero in difflens; raised to a power q < 1 they are the
largest difference, ~1e-9 here) and far below any change of the features. (The package's ``score_X``
ignores q, so it is not used.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, create_metric

KEY = ("inception", "pool3")
# vendi-score 0.0.3 reads scipy.sparse.csr.csr_matrix, deprecated in SciPy (its warning, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Please import `csr_matrix`:DeprecationWarning")
ORDERS = (1, 2, 0.5, "inf")


def _vendi(feats: np.ndarray, q: float | str = 1, batch: int = 13) -> float:
    m = create_metric("vendi", q=q)
    for s in range(0, len(feats), batch):
        m.update(FeatureBatch(False, {KEY: feats[s:s + batch]}))
    m.update(FeatureBatch(True, {KEY: feats}))  # the real side is ignored
    return m.compute()["vendi"].value


@pytest.mark.parametrize("q", ORDERS)
@pytest.mark.parametrize(("n", "dim"), [(120, 16), (25, 40)])  # n > D and n < D
def test_vendi_equals_the_vendi_score_package(q: float | str, n: int, dim: int) -> None:
    from sklearn import preprocessing
    from vendi_score import vendi

    rng = np.random.default_rng(n + dim)
    base = rng.normal(size=(6, dim))
    feats = (base[rng.integers(0, 6, n)] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    x = preprocessing.normalize(feats.astype(np.float64), axis=1)
    want = vendi.score_K(x @ x.T, q=q)
    assert 1.5 < want < n  # clusters: neither one sample nor all distinct
    assert _vendi(feats, q) == pytest.approx(want, rel=1e-7)
    assert _vendi(feats, q) == pytest.approx(vendi.score_dual(feats.astype(np.float64), q=q), rel=1e-7)


@pytest.mark.parametrize("q", ORDERS)
def test_constructed_cases(q: float | str) -> None:
    """n copies of one direction: VS = 1; n orthogonal directions: VS = n (every order q);
    two equal-size groups of identical rows: VS = 2."""
    same = np.array([[1.0, 2.0, 3.0]], np.float32) * np.arange(1, 11, dtype=np.float32)[:, None]
    assert _vendi(same, q) == pytest.approx(1.0, rel=1e-12)
    assert _vendi(np.eye(7, dtype=np.float32) * 3, q) == pytest.approx(7.0, rel=1e-12)
    two = np.repeat(np.eye(2, 5, dtype=np.float32), 6, axis=0)
    assert _vendi(two, q) == pytest.approx(2.0, rel=1e-12)


def test_vendi_uses_inception_pool3_by_default_and_only_the_fake_side() -> None:
    m = create_metric("vendi")
    (req,) = m.requirements()
    assert req.key == KEY and req.sides == "fake" and not req.prompts
    assert m.settings() == {"q": 1.0, "extractor": "inception", "layer": "pool3"}
    assert create_metric("vendi", q="inf").settings()["q"] == "inf"
    res = create_metric("vendi", q="2")
    res.update(FeatureBatch(False, {KEY: np.eye(3, dtype=np.float32)}))
    out = res.compute(ComputeContext())["vendi"]
    assert out.value == pytest.approx(3.0) and out.fields["q"] == 2.0 and out.counts == {"n_fake": 3}


def test_zero_rows_are_kept_as_the_package_does_and_warned() -> None:
    from vendi_score import vendi

    feats = np.concatenate([np.eye(4, dtype=np.float32), np.zeros((2, 4), np.float32)])
    m = create_metric("vendi")
    m.update(FeatureBatch(False, {KEY: feats}))
    res = m.compute()["vendi"]
    assert res.value == pytest.approx(vendi.score_dual(feats.astype(np.float64)), rel=1e-12)
    assert any("2 of 6 feature rows are all zero" in w for w in res.warnings)


@pytest.mark.parametrize("q", [0, -1, "two", math.nan])
def test_a_bad_order_is_one_clear_error(q: object) -> None:
    with pytest.raises(DifflensError, match="order q must be a positive number"):
        create_metric("vendi", q=q)
