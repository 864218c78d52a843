"""The property harness every registered metric inherits (DESIGN.md 2.12b): parametrized over the ONE
registry (difflens.metrics.base), so a metric added there is checked here without a line of test code.

Each metric is fed synthetic features for the layers it declares (small dimensions, so the harness is
fast) and must give:
* shards merged == one pass (3 uneven shards, merged in order);
* batch-size invariance (batches of 1, 7 and everything);
* permutation invariance where the metric declares it (KID subsets and IS splits are seeded by row);
* a state round trip through ``.npz`` + JSON (no pickle): the state arrays bit for bit, the value exactly.

Tolerances: rows-based metrics (KID, IS, P/R/D/C, CLIP score, CMMD, FD-DINOv2) see the same rows in the
same order whatever the batching, so their values are compared exactly; FID (and fd-clip, sFID, the
real side of FID-infinity, Vendi's Gram matrix: ``STREAMED``) streams float64 Gaussian statistics or sums
whose merge order changes the rounding (Chan's update), so it is compared to 1e-9 relative,
far above float64 noise (~1e-15) and far below any real change. Under a permutation, sums are taken in
another order: 1e-9 relative for the float metrics, exact for the k-NN counts (P/R/D/C).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.base import (
    FeatureBatch,
    Metric,
    create_metric,
    join_state,
    metric_names,
    metric_spec,
    split_state,
)

N_REAL, N_FAKE = 41, 29
DIMS = {"pool3": 12, "logits": 20, "image_embeds": 8, "cls": 10, "spatial": 14, "score": 1}
SETTINGS: dict[str, dict[str, Any]] = {"kid": {"kid_subset_size": 10, "kid_subsets": 6},
                                       "is": {"is_splits": 3},
                                       "fid-inf": {"min_fake": 10, "points": 4}}  # 29 fake rows here
#: metrics whose state is float64 sums (Gaussian statistics, Gram matrices): merge order changes rounding
STREAMED = ("fid", "fd-clip", "sfid", "fid-inf", "vendi")
COUNTS = ("pr", "dc")  # exact k-NN counts: exact under any row order


def _make(name: str) -> Metric:
    return create_metric(name, **SETTINGS.get(name, {}))


def _data(metric: Metric, seed: int = 0) -> dict[str, Any]:
    """Synthetic rows for every layer the metric reads, both sides, and prompts (repeating, so the
    per-prompt sums see several images per prompt)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"real": {}, "fake": {}, "text": {}}
    for req in metric.requirements():
        d = DIMS[req.layer]
        out["real"][req.key] = rng.normal(size=(N_REAL, d)).astype(np.float32)
        out["fake"][req.key] = (rng.normal(size=(N_FAKE, d)) + 0.4).astype(np.float32)
        if req.prompts:
            out["text"][(req.extractor, "text_embeds")] = rng.normal(size=(N_FAKE, d)).astype(np.float32)
    out["prompts"] = [f"prompt {i % 7}" for i in range(N_FAKE)]
    return out


def _feed(metric: Metric, data: dict[str, Any], batch: int, real_rows: Any = None,
          fake_rows: Any = None) -> Metric:
    real_rows = np.arange(N_REAL) if real_rows is None else real_rows
    fake_rows = np.arange(N_FAKE) if fake_rows is None else fake_rows
    for side, rows in (("real", real_rows), ("fake", fake_rows)):
        for s in range(0, len(rows), batch):
            idx = rows[s:s + batch]
            feats = {k: v[idx] for k, v in data[side].items()}
            if side == "real":
                metric.update(FeatureBatch(True, feats))
            else:
                metric.update(FeatureBatch(False, feats, [data["prompts"][i] for i in idx],
                                           {k: v[idx] for k, v in data["text"].items()}))
    return metric


def _json(metric: Metric) -> dict[str, Any]:
    return {k: r.to_json() for k, r in metric.compute().items()}


def _assert_same(a: dict[str, Any], b: dict[str, Any], rel: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        ea, eb = a[key], b[key]
        assert ea.keys() == eb.keys(), key
        for field in ea:
            va, vb = ea[field], eb[field]
            if rel and isinstance(va, float):
                assert math.isclose(va, vb, rel_tol=rel, abs_tol=1e-12), (key, field, va, vb)
            elif rel and isinstance(va, list):
                assert np.allclose(va, vb, rtol=rel, atol=1e-12), (key, field, va, vb)
            else:
                assert va == vb, (key, field, va, vb)


def _merge_rel(name: str) -> float:
    return 1e-9 if name in STREAMED else 0.0


ALL = metric_names()


def test_the_harness_covers_every_registered_metric() -> None:
    assert set(ALL) >= {"fid", "kid", "is", "pr", "dc", "clip", "cmmd", "fd-dinov2"}
    for name in ALL:
        m = _make(name)
        assert m.name == name and m.keys == metric_spec(name).keys and m.requirements()


@pytest.mark.parametrize("name", ALL)
def test_shards_merged_equal_one_pass(name: str) -> None:
    data = _data(_make(name))
    whole = _json(_feed(_make(name), data, batch=N_REAL))
    cuts_r, cuts_f = (0, 5, 30, N_REAL), (0, 17, 18, N_FAKE)  # uneven shards, one of a single row
    shards = [_feed(_make(name), data, 64, np.arange(cuts_r[i], cuts_r[i + 1]),
                    np.arange(cuts_f[i], cuts_f[i + 1])) for i in range(3)]
    merged = shards[0]
    for other in shards[1:]:
        merged.merge(other)
    _assert_same(_json(merged), whole, _merge_rel(name))


@pytest.mark.parametrize("name", ALL)
def test_batch_size_invariance(name: str) -> None:
    data = _data(_make(name), seed=1)
    ref = _json(_feed(_make(name), data, batch=N_REAL))
    for batch in (1, 7):
        _assert_same(_json(_feed(_make(name), data, batch=batch)), ref, _merge_rel(name))


@pytest.mark.parametrize("name", [n for n in ALL if _make(n).permutation_invariant])
def test_permutation_invariance(name: str) -> None:
    data = _data(_make(name), seed=2)
    ref = _json(_feed(_make(name), data, batch=8))
    rng = np.random.default_rng(3)
    got = _json(_feed(_make(name), data, 8, rng.permutation(N_REAL), rng.permutation(N_FAKE)))
    _assert_same(got, ref, 0.0 if name in COUNTS else 1e-9)


def test_order_dependent_metrics_do_depend_on_order() -> None:
    """The metrics that declare no permutation invariance really have none (else the flag is stale)."""
    for name in [n for n in ALL if not _make(n).permutation_invariant]:
        data = _data(_make(name), seed=4)
        rng = np.random.default_rng(5)
        a = _json(_feed(_make(name), data, 8))
        b = _json(_feed(_make(name), data, 8, rng.permutation(N_REAL), rng.permutation(N_FAKE)))
        assert a != b, name


@pytest.mark.parametrize("name", ALL)
def test_state_round_trip_through_npz_and_json(name: str, tmp_path) -> None:
    data = _data(_make(name), seed=6)
    metric = _feed(_make(name), data, batch=7)
    arrays, plain = split_state(metric.state_dict())
    np.savez(tmp_path / "state.npz", **arrays)
    (tmp_path / "state.json").write_text(json.dumps(plain))
    with np.load(tmp_path / "state.npz", allow_pickle=False) as z:
        loaded = join_state({k: z[k] for k in z.files}, json.loads((tmp_path / "state.json").read_text()))
    fresh = _make(name)
    fresh.load_state_dict(loaded)
    again, plain_again = split_state(fresh.state_dict())
    assert plain_again == plain and again.keys() == arrays.keys()
    for key in arrays:  # bit for bit, dtype included (float64 statistics stay float64)
        assert again[key].dtype == arrays[key].dtype and np.array_equal(again[key], arrays[key]), key
    _assert_same(_json(fresh), _json(metric), 0.0)
    # and the loaded state keeps accumulating like the original
    more = _data(_make(name), seed=7)
    _assert_same(_json(_feed(fresh, more, 9)), _json(_feed(metric, more, 9)), 0.0)


@pytest.mark.parametrize("name", ALL)
def test_reset_keeps_the_real_side_when_asked(name: str) -> None:
    data = _data(_make(name), seed=8)
    ref = _json(_feed(_make(name), data, batch=10))
    metric = _feed(_make(name), data, batch=10)
    metric.reset(keep_real=True)
    _feed(metric, data, 10, real_rows=np.arange(0))  # the fake side again, real side kept
    _assert_same(_json(metric), ref, _merge_rel(name))


def test_merge_refuses_other_settings_or_metrics() -> None:
    with pytest.raises(DifflensError, match="cannot merge"):
        create_metric("kid", kid_subsets=5).merge(create_metric("kid", kid_subsets=6))
    with pytest.raises(DifflensError, match="cannot merge"):
        create_metric("pr").merge(create_metric("dc"))


def test_compute_without_a_side_is_one_clear_error() -> None:
    for name in ALL:
        with pytest.raises(DifflensError, match=r"no (real|fake|generated) images"):
            _make(name).compute()


@pytest.mark.parametrize("dim", [4, 64])
def test_fid_both_routes_give_the_cli_value(dim: int) -> None:
    """FID keeps rows only while a side has at most 4 D of them (singular covariances take the trace term
    from the features, as compute_metrics does); past that the streamed statistics alone give the value.
    Both routes agree with compute_metrics to 1e-9 relative (float64 merge-order rounding)."""
    from difflens.metrics.api import compute_metrics
    from difflens.metrics.streaming import FidMetric

    rng = np.random.default_rng(9)
    real = rng.normal(size=(N_REAL, dim)).astype(np.float32)
    fake = (rng.normal(size=(N_FAKE, dim)) * 1.3 + 0.2).astype(np.float32)
    m = FidMetric()
    for s in range(0, N_REAL, 6):
        m.update(FeatureBatch(True, {("inception", "pool3"): real[s:s + 6]}))
    for s in range(0, N_FAKE, 6):
        m.update(FeatureBatch(False, {("inception", "pool3"): fake[s:s + 6]}))
    assert (len(m.rows["real"]) == 0) == (FidMetric.ROWS_PER_DIM * dim < N_REAL)
    ref = compute_metrics(real_features=real, fake_features=fake, metrics="fid")["metrics"]["fid"]
    _assert_same({"fid": m.compute()["fid"].to_json()}, {"fid": ref}, 1e-9)
