"""The Inception metrics as mergeable accumulators (:class:`~difflens.metrics.base.Metric`): FID, KID, IS,
precision/recall, density/coverage.

Each keeps the smallest state its value needs and computes it with the value functions that
:func:`difflens.metrics.api.compute_metrics` uses (:func:`difflens.metrics.values.compute_values`,
called for this one metric), so the values are the CLI's:

* FID streams :class:`~difflens.metrics.stats.GaussianStats` (float64 ``n``, mean, ``M2``; merged with
  Chan's update). While a side has at most ``4 D`` rows it also keeps them (at D = 2048: 32 MB per side),
  because at ``N <= D`` the covariance is singular and the CLI then takes the trace term from the
  features (:func:`difflens.metrics.values.fid_from_features`).
* KID, precision/recall and density/coverage keep the float32 feature rows (their values need every row).
* IS keeps the fake logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.base import (
    ComputeContext,
    FeatureBatch,
    Metric,
    MetricResult,
    Requirement,
)

INCEPTION = "inception"
POOL3 = "pool3"
LOGITS = "logits"


class Rows:
    """Feature rows of one side, appended batch by batch (concatenated on first read)."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []

    def add(self, arr: Any) -> None:
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim != 2:
            raise DifflensError(f"features must be (N, D), got shape {a.shape}.", "pass one row per image")
        if self._parts and a.shape[1] != self._parts[0].shape[1]:
            raise DifflensError(f"feature dimension changed from {self._parts[0].shape[1]} to {a.shape[1]}.",
                                "feed features of one extractor layer")
        if len(a):
            self._parts.append(a)

    def array(self) -> np.ndarray | None:
        if not self._parts:
            return None
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0]

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def extend(self, other: Rows) -> None:
        arr = other.array()
        if arr is not None:
            self.add(arr.copy())

    def clear(self) -> None:
        self._parts = []

    def load(self, arr: np.ndarray | None) -> None:
        self.clear()
        if arr is not None and arr.size:
            self.add(arr)


def _side(name: str, features: Any = None, logits: Any = None, stats: Any = None) -> Any:
    from difflens.metrics.sources import FeaturesSource
    from difflens.metrics.values import Side

    n = len(features) if features is not None else (int(stats.n) if stats is not None else 0)
    src = FeaturesSource(features=np.zeros((n, 0), np.float32) if features is None else features)
    return Side(name, f"--{name}", src, features=features, logits=logits, stats=stats)


class _Cfg:
    """The settings compute_values reads, from a metric's own settings."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update({"kid_subsets": 100, "kid_subset_size": 1000, "seed": 2020, "is_splits": 10,
                              "k_pr": 3, "k_dc": 5, "bootstrap": 0, **kw})


def _values(name: str, cfg: _Cfg, r: Any, f: Any, ctx: ComputeContext | None,
            keys: tuple[str, ...]) -> dict[str, MetricResult]:
    from difflens.metrics.values import compute_values

    warnings: list[str] = []
    out = compute_values(cfg, (name,), r, f, ctx.device if ctx else None, warnings)
    results = {}
    for key in keys:
        entry = dict(out[key])
        value = entry.pop("value")
        counts = {k: entry.pop(k) for k in ("n_real", "n_fake") if k in entry}
        results[key] = MetricResult(key, value, entry, counts, [])
    results[keys[0]].warnings = warnings
    return results


class RowsPair:
    """The feature rows of both sides: merged by concatenation, reset keeping the real side on request."""

    rows: dict[str, Rows]

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)  # type: ignore[attr-defined]
        assert isinstance(other, RowsPair)
        for side in ("real", "fake"):
            self.rows[side].extend(other.rows[side])

    def reset(self, keep_real: bool = False) -> None:
        for side in ("fake",) if keep_real else ("real", "fake"):
            self.rows[side].clear()


class _TwoSided(RowsPair, Metric):
    """Keeps the ``pool3`` rows of both sides."""

    def __init__(self, seed: int = 2020, bootstrap: int = 0, **settings: Any) -> None:
        self.seed, self.bootstrap = int(seed), int(bootstrap)
        self._extra = settings
        self.rows = {"real": Rows(), "fake": Rows()}

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(INCEPTION, POOL3, "both"),)

    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "bootstrap": self.bootstrap, **self._extra}

    def update(self, batch: FeatureBatch) -> None:
        self.rows["real" if batch.real else "fake"].add(batch.features[(INCEPTION, POOL3)])

    def state_dict(self) -> dict[str, Any]:
        return {f"{s}_features": self._arr(s) for s in ("real", "fake")}

    def _arr(self, side: str) -> np.ndarray:
        arr = self.rows[side].array()
        return np.zeros((0, 0), np.float32) if arr is None else arr

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s in ("real", "fake"):
            self.rows[s].load(np.asarray(state[f"{s}_features"], dtype=np.float32))

    def _sides(self) -> tuple[Any, Any]:
        r, f = self.rows["real"].array(), self.rows["fake"].array()
        if r is None or f is None:
            raise DifflensError(f"{self.name}: no {'real' if r is None else 'fake'} images were given.",
                                "call update(images, real=True) and update(images, real=False) first")
        return _side("real", r), _side("fake", f)

    def _cfg(self) -> _Cfg:
        return _Cfg(seed=self.seed, bootstrap=self.bootstrap, **self._extra)

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        r, f = self._sides()
        return _values(self.name, self._cfg(), r, f, context, self.keys)


class KidMetric(_TwoSided):
    """KID (Binkowski et al. 2018): unbiased MMD^2, kernel (x.y/d + 1)^3, seeded subsets (row order
    matters)."""

    name = "kid"
    keys = ("kid",)
    permutation_invariant = False

    def __init__(self, seed: int = 2020, bootstrap: int = 0, kid_subsets: int = 100,
                 kid_subset_size: int = 1000) -> None:
        super().__init__(seed, bootstrap, kid_subsets=int(kid_subsets), kid_subset_size=int(kid_subset_size))


class _Knn(_TwoSided):
    def __init__(self, seed: int = 2020, bootstrap: int = 0, k_pr: int = 3, k_dc: int = 5) -> None:
        super().__init__(seed, bootstrap, k_pr=int(k_pr), k_dc=int(k_dc))

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        r, f = self._sides()
        out = _values(self.name, self._cfg(), r, f, context, self.keys)
        chosen = context.chosen if context is not None else (self.name,)
        knn = [m for m in ("pr", "dc") if m in chosen]
        if len(knn) == 2:  # one duplicate-rows warning for both, with the smaller k (as the CLI)
            from difflens.metrics.values import _duplicate_warnings

            first = out[self.keys[0]]
            own = _duplicate_warnings([r, f], self._extra["k_pr" if self.name == "pr" else "k_dc"])
            first.warnings = [w for w in first.warnings if w not in own]
            if self.name == knn[0]:
                k = min(self._extra["k_pr"], self._extra["k_dc"])
                first.warnings = _duplicate_warnings([r, f], k) + first.warnings
        return out


class PrMetric(_Knn):
    """Precision/recall (Kynkaanniemi et al. 2019), k = 3, exact k-NN (:mod:`difflens.metrics.knn`)."""

    name = "pr"
    keys = ("precision", "recall")


class DcMetric(_Knn):
    """Density/coverage (Naeem et al. 2020), k = 5, exact k-NN (:mod:`difflens.metrics.knn`)."""

    name = "dc"
    keys = ("density", "coverage")


class FidMetric(_TwoSided):
    """FID = ||mu_r - mu_f||^2 + Tr S_r + Tr S_f - 2 Tr((S_r S_f)^(1/2)) from streamed Gaussian statistics."""

    name = "fid"
    keys = ("fid",)
    ROWS_PER_DIM: ClassVar[int] = 4  # rows kept per feature dimension (singular-covariance route)

    def __init__(self, seed: int = 2020, bootstrap: int = 0) -> None:
        super().__init__(seed, bootstrap)
        self.stats: dict[str, Any] = {"real": None, "fake": None}

    def update(self, batch: FeatureBatch) -> None:
        from difflens.metrics.stats import GaussianStats

        side = "real" if batch.real else "fake"
        arr = np.asarray(batch.features[(INCEPTION, POOL3)], dtype=np.float32)
        if arr.ndim != 2:
            raise DifflensError(f"features must be (N, D), got shape {arr.shape}.", "pass one row per image")
        cur = self.stats[side]
        add = GaussianStats.from_features(np.asarray(arr, dtype=np.float64))
        self.stats[side] = add if cur is None else cur.merge(add)
        self._keep(side, arr)

    def _keep(self, side: str, arr: np.ndarray) -> None:
        rows = self.rows[side]
        if self.stats[side].n <= self.ROWS_PER_DIM * arr.shape[1] or self.bootstrap:
            rows.add(arr)
        else:
            rows.clear()  # too many rows: the statistics alone carry the value

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, FidMetric)
        for side in ("real", "fake"):
            a, b = self.stats[side], other.stats[side]
            if b is None:
                continue
            keep = (a is None or len(self.rows[side]) == a.n) and len(other.rows[side]) == b.n
            self.stats[side] = b if a is None else a.merge(b)
            if keep and (other.rows[side].array() is not None):
                self._keep(side, other.rows[side].array().copy())  # type: ignore[union-attr]
            elif not keep:
                self.rows[side].clear()

    def reset(self, keep_real: bool = False) -> None:
        super().reset(keep_real)
        for side in ("fake",) if keep_real else ("real", "fake"):
            self.stats[side] = None

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        for side in ("real", "fake"):
            st = self.stats[side]
            out[f"{side}_n"] = -2 if st is None else int(st.n)  # -2: no rows yet
            out[f"{side}_mean"] = np.zeros(0) if st is None else st.mean
            out[f"{side}_m2"] = np.zeros((0, 0)) if st is None else st.m2
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from difflens.metrics.stats import GaussianStats

        super().load_state_dict(state)
        for side in ("real", "fake"):
            n = int(state[f"{side}_n"])
            self.stats[side] = None if n == -2 else GaussianStats(
                n, np.asarray(state[f"{side}_mean"], np.float64), np.asarray(state[f"{side}_m2"], np.float64))

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        sr, sf = self.stats["real"], self.stats["fake"]
        if sr is None or sf is None:
            raise DifflensError(f"fid: no {'real' if sr is None else 'fake'} images were given.",
                                "call update(images, real=True) and update(images, real=False) first")
        rf, ff = self.rows["real"].array(), self.rows["fake"].array()
        full = rf is not None and ff is not None and len(rf) == sr.n and len(ff) == sf.n
        r = _side("real", rf if full else None, stats=sr)
        f = _side("fake", ff if full else None, stats=sf)
        return _values("fid", self._cfg(), r, f, context, self.keys)


class IsMetric(Metric):
    """Inception score (Salimans et al. 2016): exp(E KL(p(y|x) || p(y))) over seeded splits of the fake
    logits (the split order depends on the row order)."""

    name = "is"
    keys = ("is",)
    permutation_invariant = False

    def __init__(self, seed: int = 2020, is_splits: int = 10) -> None:
        self.seed, self.is_splits = int(seed), int(is_splits)
        self.logits = Rows()

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(INCEPTION, LOGITS, "fake"),)

    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "is_splits": self.is_splits}

    def update(self, batch: FeatureBatch) -> None:
        if not batch.real:
            self.logits.add(batch.features[(INCEPTION, LOGITS)])

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, IsMetric)
        self.logits.extend(other.logits)

    def reset(self, keep_real: bool = False) -> None:
        self.logits.clear()

    def state_dict(self) -> dict[str, Any]:
        arr = self.logits.array()
        return {"fake_logits": np.zeros((0, 0), np.float32) if arr is None else arr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logits.load(np.asarray(state["fake_logits"], dtype=np.float32))

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        logits = self.logits.array()
        if logits is None:
            raise DifflensError("is: no fake images were given.", "call update(images, real=False) first")
        f = _side("fake", np.zeros((len(logits), 0), np.float32), logits=logits)
        return _values("is", _Cfg(seed=self.seed, is_splits=self.is_splits), None, f, context, self.keys)
