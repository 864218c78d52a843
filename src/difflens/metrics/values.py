"""Metric values from resolved inputs: one ``Side`` per input (features, logits or statistics and its
fingerprint), and the computation of FID, KID, IS, precision/recall and density/coverage from them, with the
counts each metric used and the warnings that qualify the values (small samples, KID subsets that are the
whole set, duplicate rows that degrade the k-NN metrics). :mod:`difflens.metrics.api` resolves and checks
the inputs; :mod:`difflens.metrics.record` publishes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.sources import Source

#: JSON keys each metric choice produces.
METRIC_KEYS = {"fid": ("fid",), "kid": ("kid",), "is": ("is",), "pr": ("precision", "recall"),
               "dc": ("density", "coverage")}
FID_MIN_N = 5000
INCEPTION_DIM = 2048


@dataclass
class Side:
    """One input side during a run."""

    name: str  # "real" / "fake"
    flag: str  # "--real" / "--fake"
    source: Source
    features: Any | None = None
    logits: Any | None = None
    stats: Any | None = None
    fingerprint: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Sample count; -1 when unknown (pytorch-fid statistics files do not record it)."""
        if self.features is not None:
            return int(self.features.shape[0])
        if self.stats is not None:  # merged across ranks (features not gathered)
            return int(self.stats.n)
        return int(self.source.n)

    @property
    def n_or_none(self) -> int | None:
        return self.n if self.n >= 0 else None


def side_label(side: Side) -> str:
    """The path of a side's input, or its kind for in-memory inputs (for messages)."""
    return str(side.source.path) if side.source.path is not None else f"({side.source.kind})"


def _dim(side: Side) -> int:
    if side.features is not None:
        return int(side.features.shape[1])
    if side.stats is not None:
        return int(side.stats.dim)
    return INCEPTION_DIM  # images, before extraction


def check_dims(r: Side | None, f: Side | None) -> None:
    if r is None or f is None:
        return
    if _dim(r) != _dim(f):
        raise DifflensError(f"feature dimensions differ: {r.flag} has {_dim(r)}, {f.flag} has {_dim(f)}.",
                            "compute both with the same extractor and layer (Inception pool3: 2048)")


def side_stats(side: Side) -> Any:
    from difflens.metrics.stats import GaussianStats

    if side.stats is None:
        import numpy as np

        side.stats = GaussianStats.from_features(np.asarray(side.features, dtype=np.float64))
    return side.stats


def _fid_value(real_stats: Any, fake_stats: Any, real_f: Any | None, fake_f: Any | None) -> float:
    """FID; when both feature matrices are at hand and a covariance is singular (N <= D), the trace term
    comes from the features (nuclear norm of B A^T, O(N M D)) instead of two D x D eigendecompositions."""
    import numpy as np

    from difflens.metrics import fid as fid_mod

    if real_f is not None and fake_f is not None and fid_from_features(len(real_f), len(fake_f),
                                                                         real_stats.dim):
        diff = real_stats.mean - fake_stats.mean
        tr = (float(diff @ diff) + float(np.trace(real_stats.covariance()))
              + float(np.trace(fake_stats.covariance())))
        return max(tr - 2.0 * fid_mod.trace_sqrt_product_from_features(real_f, fake_f), 0.0)
    return float(fid_mod.fid_from_stats(real_stats, fake_stats))


def fid_from_features(n_real: int, n_fake: int, dim: int) -> bool:
    """Whether FID takes its trace term from the features (a covariance is singular and the product is
    small); under torchrun the features are then gathered rather than the statistics merged."""
    return min(n_real, n_fake) <= dim and n_real * n_fake <= 4 * dim * dim


def _fid(r: Side, f: Side) -> float:
    return _fid_value(side_stats(r), side_stats(f), r.features, f.features)


def _counts(*sides: Side | None) -> dict[str, int | None]:
    """``n_real``/``n_fake`` of the sides a metric used (None: unknown count)."""
    return {f"n_{s.name}": s.n_or_none for s in sides if s is not None}


def _duplicate_warnings(sides: list[Side], k: int) -> list[str]:
    """Exact duplicate feature rows shrink a set's k-NN radii (to 0 for a row that occurs more than k
    times), which biases precision, recall, density and coverage, and makes them degenerate at radius 0."""
    from difflens.metrics.validate import duplicate_rows

    out = []
    for side in sides:
        dups, largest = duplicate_rows(side.features)
        if not dups:
            continue
        effect = (f"rows that occur more than k={k} times have k-NN radius 0, so precision, recall, density "
                  "and coverage are degenerate" if largest > k else
                  "duplicates shrink the k-NN radii and bias precision, recall, density and coverage")
        out.append(f"{side.flag} {side_label(side)}: {dups} of {side.n} feature rows repeat another row "
                   f"exactly (up to {largest} copies of one row; duplicated images?): {effect}; remove the "
                   "duplicates")
    return out


def compute_values(cfg: Any, chosen: tuple[str, ...], r: Side | None, f: Side | None, dev: str | None,
             warnings: list[str]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    if "fid" in chosen:
        assert r is not None and f is not None
        small = [f"n_{s.name}={s.n}" for s in (r, f) if 0 <= s.n < FID_MIN_N]
        if small:
            warnings.append(f"FID: {', '.join(small)} < {FID_MIN_N}: FID is biased upward at small N; "
                            "compare FIDs only at equal N")
        singular = [f"n_{s.name}={s.n}" for s in (r, f) if 0 <= s.n <= _dim(s)]
        if singular:
            warnings.append(f"FID: {', '.join(singular)} <= feature dimension {_dim(r)}: the covariance is "
                            "singular (FID is defined but especially noisy)")
        out["fid"] = {"value": _fid(r, f), **_counts(r, f)}
    real_f = np.asarray(r.features, dtype=np.float32) if r is not None and r.features is not None else None
    fake_f = np.asarray(f.features, dtype=np.float32) if f is not None and f.features is not None else None
    if "kid" in chosen:
        from difflens.metrics.kid import kernel_inception_distance

        res = kernel_inception_distance(real_f, fake_f, num_subsets=cfg.kid_subsets,
                                        subset_size=cfg.kid_subset_size, seed=cfg.seed)
        out["kid"] = {"value": float(res.value), "std": None if res.std is None else float(res.std),
                      "subset_size": int(res.subset_size), "num_subsets": int(res.num_subsets),
                      **_counts(r, f)}
        warnings.extend(w if w.startswith("KID") else f"KID: {w}" for w in res.warnings)
    if "is" in chosen:
        from difflens.metrics.inception_score import inception_score, small_sample_warning

        assert f is not None
        splits = min(cfg.is_splits, f.n)
        mean, std = inception_score(np.asarray(f.logits), splits=splits, seed=cfg.seed)
        if cfg.is_splits > f.n:
            warnings.append(f"IS: {f.n} fake samples, fewer than --is-splits {cfg.is_splits}; used {f.n} "
                            "splits")
        note = small_sample_warning(f.n, splits)
        if note:
            warnings.append(note)
        out["is"] = {"value": float(mean), "std": float(std) if splits > 1 else None, "splits": splits,
                     **_counts(f)}
    knn_metrics = [k for m in ("pr", "dc") if m in chosen for k in METRIC_KEYS[m]]
    if knn_metrics:
        from difflens.metrics.knn import distributed_prdc

        assert r is not None and f is not None
        warnings.extend(_duplicate_warnings([r, f], min(k for m, k in (("pr", cfg.k_pr), ("dc", cfg.k_dc))
                                                        if m in chosen)))
        knn_dev = dev or "cpu"
        # exact; under torchrun each rank takes the rows of its share (one process: knn.prdc itself)
        res = distributed_prdc(real_f, fake_f, k_pr=cfg.k_pr, k_dc=cfg.k_dc, device=knn_dev,
                               metrics=tuple(knn_metrics))
        for key in knn_metrics:
            k = cfg.k_pr if key in METRIC_KEYS["pr"] else cfg.k_dc
            out[key] = {"value": float(res[key]), "k": k, **_counts(r, f)}
    if cfg.bootstrap:
        _bootstrap(cfg, chosen, r, f, real_f, fake_f, knn_metrics, dev, out, warnings)
    return out


def _bootstrap(cfg: Any, chosen: tuple[str, ...], r: Side | None, f: Side | None, real_f: Any,
               fake_f: Any, knn_metrics: list[str], dev: str | None, out: dict[str, Any],
               warnings: list[str]) -> None:
    """Percentile 95% intervals from ``cfg.bootstrap`` resamples (with replacement) of the fake set, drawn
    by :mod:`difflens.metrics.bootstrap` (the same resamples for every metric); the real set is fixed."""
    import numpy as np

    from difflens.metrics import bootstrap as bs

    targets = [m for m in ("fid", "kid") if m in chosen] + knn_metrics
    if not targets:
        return
    if fake_f is None:
        warnings.append("bootstrap: --fake is a statistics file, so no interval can be computed (resampling "
                        "needs the fake features)")
        return
    assert r is not None and f is not None
    values: dict[str, Any] = {}
    if "fid" in targets:
        values["fid"] = bs.bootstrap_fid(side_stats(r), fake_f, cfg.bootstrap, cfg.seed)
    if "kid" in targets:
        values["kid"] = bs.bootstrap_kid(real_f, fake_f, cfg.bootstrap, cfg.seed)
    if knn_metrics:
        values.update(bs.bootstrap_prdc(real_f, fake_f, cfg.bootstrap, cfg.seed, k_pr=cfg.k_pr, k_dc=cfg.k_dc,
                                        device=dev or "cpu", metrics=tuple(knn_metrics)))
    for key in targets:
        lo, hi = bs.percentile_interval(np.asarray(values[key]), level=0.95)
        out[key]["ci95"] = [float(lo), float(hi)]
    notes = ["the real set" + (" and its k-NN radii" if knn_metrics else "") + " stay fixed"]
    if "kid" in targets:
        notes.append("KID's interval comes from the full-set unbiased MMD^2 of each resample")
    if knn_metrics:
        notes.append("duplicates in a resample shrink k-NN radii, so read the k-NN intervals as the spread "
                     "due to the fake sample")
    warnings.append(f"bootstrap: 95% intervals from {cfg.bootstrap} resamples of the fake set with "
                    f"replacement ({'; '.join(notes)})")
