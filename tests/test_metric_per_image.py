"""PerImageScoreMetric (metrics/per_image.py): the per-image score base class of the preference metrics.

Checked against direct numpy computations on the same scores: the mean, the per-prompt table, the
bootstrap interval (the same seeded resamples as metrics/bootstrap.py), merge = concatenation, the state
round trip, and one clear error for each bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, split_state
from difflens.metrics.per_image import PerImageScoreMetric, fmean


class _Toy(PerImageScoreMetric):
    name = "toy"
    keys = ("toy_score",)
    label = "Toy"

    def __init__(self, which: str = "a") -> None:
        super().__init__(f"toy:{which}")


def _batch(scores: np.ndarray, prompts: list[str] | None, extractor: str = "toy:a") -> FeatureBatch:
    return FeatureBatch(False, {(extractor, "score"): np.asarray(scores, np.float32)[:, None]}, prompts)


def _fed(scores: np.ndarray, prompts: list[str], batch: int = 4) -> _Toy:
    m = _Toy()
    for s in range(0, len(scores), batch):
        m.update(_batch(scores[s:s + batch], prompts[s:s + batch]))
    return m


@pytest.fixture
def data() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.25, 0.03, size=23).astype(np.float32)
    prompts = [f"p{i % 5}" for i in range(23)]
    return scores, prompts


def test_requirements_and_group() -> None:
    (req,) = _Toy().requirements()
    assert (req.extractor, req.layer, req.sides, req.prompts) == ("toy:a", "score", "fake", True)
    assert _Toy.group == "features"


def test_mean_n_and_per_prompt_table(data) -> None:
    scores, prompts = data
    res = _fed(scores, prompts).compute()["toy_score"]
    s64 = scores.astype(np.float64)  # the float32 scores widened exactly
    assert math.isclose(res.value, float(s64.mean()), rel_tol=1e-12)
    assert res.fields["n"] == res.fields["n_fake"] == 23 and "ci95" not in res.fields
    table = res.fields["per_prompt"]
    assert list(table) == sorted(set(prompts))
    for p, row in table.items():
        sel = s64[[i for i, q in enumerate(prompts) if q == p]]
        assert row["count"] == len(sel) and math.isclose(row["mean"], float(sel.mean()), rel_tol=1e-12)
    # the count-weighted per-prompt means give back the overall mean
    total = sum(r["count"] * r["mean"] for r in table.values()) / 23
    assert math.isclose(total, res.value, rel_tol=1e-12)
    got, got_prompts = _fed(scores, prompts).per_image()
    assert got.dtype == np.float64 and np.array_equal(got, s64) and got_prompts == prompts


def test_bootstrap_interval_uses_the_shared_seeded_resamples(data) -> None:
    from difflens.metrics.bootstrap import bootstrap_indices

    scores, prompts = data
    res = _fed(scores, prompts).compute(ComputeContext(bootstrap=200, seed=7))["toy_score"]
    s64 = scores.astype(np.float64)
    means = [s64[idx].mean() for idx in bootstrap_indices(23, 200, 7)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert res.fields["ci95"] == pytest.approx([lo, hi], rel=1e-12)
    assert lo < res.value < hi
    other = _fed(scores, prompts).compute(ComputeContext(bootstrap=200, seed=8))["toy_score"]
    assert other.fields["ci95"] != res.fields["ci95"]  # the seed is used


def test_mean_does_not_depend_on_row_order(data) -> None:
    scores, prompts = data
    perm = np.random.default_rng(1).permutation(23)
    a = _fed(scores, prompts).compute()["toy_score"].to_json()
    b = _fed(scores[perm], [prompts[i] for i in perm], batch=3).compute()["toy_score"].to_json()
    assert a == b  # exactly: fsum is exactly rounded, the table is in sorted prompt order
    assert fmean([1e16, 1.0, -1e16]) == 1.0 / 3  # exactly rounded sum (a naive sum gives 0)


def test_merge_concatenates_and_state_round_trips(data) -> None:
    scores, prompts = data
    a, b = _fed(scores[:10], prompts[:10]), _fed(scores[10:], prompts[10:])
    a.merge(b)
    whole = _fed(scores, prompts)
    assert np.array_equal(a.per_image()[0], whole.per_image()[0]) and a.prompts == whole.prompts
    arrays, plain = split_state(a.state_dict())  # plain arrays and strings: no pickle needed
    assert arrays["scores"].dtype == np.float64 and plain["prompts"] == prompts
    fresh = _Toy()
    fresh.load_state_dict({**arrays, **plain})
    assert fresh.compute()["toy_score"].to_json() == whole.compute()["toy_score"].to_json()
    fresh.reset()
    with pytest.raises(DifflensError, match="no generated images"):
        fresh.compute()
    with pytest.raises(DifflensError, match="cannot merge"):
        _Toy("a").merge(_Toy("b"))


def test_real_batches_are_ignored(data) -> None:
    scores, prompts = data
    m = _fed(scores, prompts)
    m.update(FeatureBatch(True, {("toy:a", "score"): np.ones((3, 1), np.float32)}))
    assert len(m.per_image()[0]) == 23


def test_bad_input_is_one_clear_error() -> None:
    m = _Toy()
    with pytest.raises(DifflensError, match="needs one prompt per generated image"):
        m.update(_batch(np.ones(3), None))
    with pytest.raises(DifflensError, match="3 images but 2 prompts"):
        m.update(_batch(np.ones(3), ["a", "b"]))
    with pytest.raises(DifflensError, match="no 'toy:a' scores"):
        m.update(_batch(np.ones(3), ["a", "b", "c"], extractor="other"))
    with pytest.raises(DifflensError, match="one number per image"):
        m.update(FeatureBatch(False, {("toy:a", "score"): np.ones((3, 2), np.float32)}, ["a", "b", "c"]))
    with pytest.raises(DifflensError, match="2 scores but 1 prompts"):
        m.load_state_dict({"scores": np.ones(2), "prompts": ["a"]})
    assert not len(m.per_image()[0])  # nothing was half-added
