"""Public Python API of the Inception metrics: FID, KID, IS, precision/recall, density/coverage.

``compute_metrics(real, fake)`` takes, for each side, a folder of images, a list of image paths, a uint8
``(N, H, W, 3)`` array (or ``.npy``/``.npz`` file), statistics (``.npz`` with ``mu``/``sigma``, a
:class:`~difflens.metrics.stats.GaussianStats` or a dict) or precomputed ``(N, D)`` features, and returns
the same record that ``difflens metrics --json`` writes (schema in :mod:`difflens.metrics.record`)::

    {"schema_version": 1,
     "metrics": {"fid": {"value": v, "n_real": N, "n_fake": M, "ci95": [lo, hi]},
                 "kid": {"value": m, "std": s, "subset_size": ..., "num_subsets": ..., ...},
                 "is": {"value": m, "std": s, "splits": ..., "n_fake": M}, "precision": {"value": p, "k": 3,
                 ...}, "recall": ..., "density": ..., "coverage": ...},
     "n_real": N, "n_fake": M, "protocol": {...}, "versions": {...}, "warnings": [...]}

``ci95`` appears only with ``bootstrap > 0``. One extraction pass per image source gives pool3 features
(FID, KID, PR, DC) and logits (IS). Everything is validated (inputs, metric choice, output paths, protocol
fingerprints, weights) before the first image is read, and nothing is written unless every step succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.features.base import check_compatible
from difflens.metrics.base import metric_names, resolve_metrics
from difflens.metrics.config import MetricsConfig
from difflens.metrics.record import finalize, protocol_record
from difflens.metrics.sources import (
    FeaturesSource,
    Source,
    StatsSource,
    resolve_source,
)
from difflens.metrics.values import (
    METRIC_KEYS,
    Side,
    check_dims,
    compute_values,
    fid_from_features,
    side_label,
    side_stats,
)

METRICS: tuple[str, ...] = metric_names("inception")  # fid, kid, is, pr, dc (difflens.metrics.base)
_D = MetricsConfig()  # the defaults


def parse_metrics(spec: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"fid,kid"`` or ``["fid", "kid"]`` -> ``("fid", "kid")`` (validated, aliases resolved, registry order:
    :func:`difflens.metrics.base.resolve_metrics`)."""
    if spec is None:
        return None
    return resolve_metrics(spec, "inception", "unknown metric(s) in --metrics")


def _needs(metric: str) -> str:
    return {"fid": "statistics or features on both sides", "kid": "features (or images) on both sides",
            "pr": "features (or images) on both sides", "dc": "features (or images) on both sides",
            "is": "fake images (or fake features with logits)"}[metric]


def available_metrics(real: Source | None, fake: Source | None) -> dict[str, str | None]:
    """For each metric, None when the inputs allow it, else the reason it is not possible."""
    def has_feats(s: Source | None) -> bool:
        return s is not None and s.kind in ("folder", "images", "features")

    out: dict[str, str | None] = {}
    both = real is not None and fake is not None
    out["fid"] = None if both else "needs both --real and --fake"
    for m in ("kid", "pr", "dc"):
        if not both:
            out[m] = "needs both --real and --fake"
        elif not (has_feats(real) and has_feats(fake)):
            side = "--real" if not has_feats(real) else "--fake"
            out[m] = f"needs features on both sides, but {side} is a statistics file"
        else:
            out[m] = None
    if fake is None:
        out["is"] = "needs --fake"
    elif fake.kind in ("folder", "images") or (fake.kind == "features" and fake.logits is not None):
        out["is"] = None
    else:
        out["is"] = f"needs fake images (or features with logits), but --fake is {fake.kind}"
    return out


def _resolve_side(spec: Any, features_spec: Any, name: str) -> Side | None:
    flag = f"--{name}"
    if spec is not None and features_spec is not None:
        raise DifflensError(f"both {flag} and {flag}-features were given.", "pass only one of them")
    if features_spec is not None:
        return Side(name, f"{flag}-features", resolve_source(features_spec, f"{flag}-features",
                                                             want_features=True))
    if spec is None:
        return None
    return Side(name, flag, resolve_source(spec, flag))


def _check_output(path: str | Path | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        raise DifflensError(f"{flag} {p} is a folder.", "pass a file name")
    return p


def _stats_output(path: Path | None, flag: str) -> Path | None:
    if path is not None and path.suffix.lower() != ".npz":
        raise DifflensError(f"{flag} {path} must end in .npz.", f"use e.g. {flag} {path.with_suffix('.npz')}")
    return path


def _save_targets(real: Side | None, fake: Side | None, save_stats: Path | None,
                  save_real_stats: Path | None, save_fake_stats: Path | None) -> dict[str, Path]:
    """Which side's statistics go where; ``save_stats`` names the one side whose statistics are computed."""
    def computable(side: Side | None) -> bool:
        return side is not None and side.source.kind != "stats"

    targets: dict[str, Path] = {}
    if save_stats is not None:
        sides = [s for s in (real, fake) if computable(s)]
        if len(sides) != 1:
            if not sides:
                raise DifflensError("--save-stats: no input to compute statistics from (both are statistics "
                                    "files or absent).", "pass images or features with --real or --fake")
            raise DifflensError("--save-stats is ambiguous: both --real and --fake are computed here.",
                                "use --save-real-stats FILE and/or --save-fake-stats FILE")
        targets[sides[0].name] = save_stats
    for side, path, flag in ((real, save_real_stats, "--save-real-stats"),
                             (fake, save_fake_stats, "--save-fake-stats")):
        if path is None:
            continue
        want = "real" if flag == "--save-real-stats" else "fake"
        if not computable(side):
            raise DifflensError(f"{flag}: --{want} is {'absent' if side is None else 'already statistics'}.",
                                f"pass images or features with --{want}")
        if want in targets:
            raise DifflensError(f"{flag} and --save-stats both name the {want} statistics.", "pass only one")
        targets[want] = path
    if len(set(targets.values())) != len(targets):
        raise DifflensError("the real and fake statistics would be written to the same file.",
                            "give two different file names")
    return targets


def compute_metrics(
    real: Any = None,
    fake: Any = None,
    metrics: str | Iterable[str] | None = None,
    *,
    real_features: Any = None,
    fake_features: Any = None,
    protocol: str = _D.protocol,
    inception_weights: str | Path | None = None,
    inception_impl: str = _D.inception_impl,
    device: str | None = None,
    batch_size: int = _D.batch_size,
    seed: int = _D.seed,
    kid_subset_size: int = _D.kid_subset_size,
    kid_subsets: int = _D.kid_subsets,
    is_splits: int = _D.is_splits,
    bootstrap: int = _D.bootstrap,
    offline: bool = False,
    strict: bool = _D.strict,
    allow_protocol_mismatch: bool = _D.allow_protocol_mismatch,
    save_stats: str | Path | None = None,
    save_real_stats: str | Path | None = None,
    save_fake_stats: str | Path | None = None,
    show_progress: bool = True,
    preprocessing: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compute the chosen metrics (default: every metric the inputs allow) between ``real`` and ``fake``.

    Args:
        real, fake: folder, list of image paths, uint8 (N, H, W, 3) array or ``.npy``/``.npz`` file,
            statistics (``.npz``/GaussianStats/dict with ``mu``, ``sigma``) or (N, D) features.
        metrics: subset of ``fid,kid,is,pr,dc`` (comma string or iterable). Statistics inputs allow FID
            only; IS needs fake images; everything but IS needs both sides.
        real_features, fake_features: precomputed (N, D) features (``.npy`` or array) instead of images.
        protocol: ``tf-legacy`` (torch-fidelity-exact) or ``clean`` (clean-fid's resize).
        inception_weights: explicit weights file; else looked up (see :mod:`difflens.metrics.inception`).
        inception_impl: ``reference`` (torch-fidelity's module, bit-identical features) or ``fast``
            (folded batch-norm, channels-last; :mod:`difflens.metrics.inception_fast`).
        device: ``cpu``, ``cuda`` or None (auto).
        batch_size: images per Inception forward pass (does not change features beyond float32 noise).
        seed: seeds KID subsets, IS split shuffling and bootstrap resampling.
        kid_subset_size, kid_subsets: KID subsets (shrunk to the smaller set, with a warning).
        is_splits: IS splits.
        bootstrap: B > 0 gives ``ci95`` for fid, kid, precision, recall, density and coverage from B
            resamples (with replacement) of the fake set; the real set and its k-NN radii stay fixed.
        offline: never download weights (also on with ``HF_HUB_OFFLINE=1``/``DIFFLENS_OFFLINE=1``).
        strict: an unreadable image is an error instead of a skipped file with a warning.
        allow_protocol_mismatch: compare statistics made under different fingerprints (with a warning).
        save_stats: write the statistics of the one side computed here (real or fake) to this ``.npz``.
        save_real_stats, save_fake_stats: write that side's statistics (``mu``, ``sigma``, ``n`` and the
            fingerprint; pytorch-fid compatible).
        show_progress: progress bars (only drawn on a terminal).
        preprocessing: per side (``"real"``/``"fake"``), fingerprint entries of a preprocessing already
            applied to images given here (``{"reference_preprocess": ...}`` of a dataset spec read with
            ``--reference-size``), so they are compared with statistics files that record theirs.

    Returns:
        The result dict (see the module docstring). Raises :class:`DifflensError` on bad input.
    """
    from difflens.versions import collect_versions

    cfg = MetricsConfig(metrics=parse_metrics(metrics), protocol=protocol,  # type: ignore[arg-type]
                        inception_impl=inception_impl, batch_size=batch_size, seed=seed,  # type: ignore[arg-type]
                        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, is_splits=is_splits,
                        bootstrap=bootstrap, strict=strict, allow_protocol_mismatch=allow_protocol_mismatch)
    cfg.validate()
    r = _resolve_side(real, real_features, "real")
    f = _resolve_side(fake, fake_features, "fake")
    if r is None and f is None:
        raise DifflensError("no input given.", "pass --real and --fake (images, statistics or features)")
    targets = _save_targets(r, f, _stats_output(_check_output(save_stats, "--save-stats"), "--save-stats"),
                            _stats_output(_check_output(save_real_stats, "--save-real-stats"),
                                          "--save-real-stats"),
                            _stats_output(_check_output(save_fake_stats, "--save-fake-stats"),
                                          "--save-fake-stats"))
    warnings: list[str] = []
    chosen = _choose_metrics(cfg, r, f, bool(targets), warnings)

    # Cheap checks on every side (counts, dimensions) before weights or images are read.
    for side in (r, f):
        if side is None:
            continue
        src = side.source
        if isinstance(src, FeaturesSource):
            side.features, side.logits = src.features, src.logits
        elif isinstance(src, StatsSource):
            side.stats = src.stats
        if 0 <= side.n < 2:
            raise DifflensError(f"{side.flag}: {side.n} sample(s); at least 2 are needed.", "add samples")
        if side.n < 0:
            warnings.append(f"{side.flag} {side_label(side)}: the statistics do not record their sample "
                            "count")
    check_dims(r, f)
    # Fingerprints of the inputs that carry one; extraction's own is known once the weights are resolved.
    image_sides = [s for s in (r, f) if s is not None and s.source.kind in ("folder", "images")]
    extractor = None
    dev = None
    from difflens import distributed as dist

    ctx = dist.get_context()  # torchrun / accelerate launch: one rank per device; else a single process
    if ctx.is_distributed and device in (None, "auto", "cuda"):
        device = ctx.device  # each rank on the GPU of its LOCAL_RANK
    if image_sides:
        from difflens.features.base import Fingerprint
        from difflens.features.inception_weights import resolve_inception_weights
        from difflens.models import resolve_device

        weights = resolve_inception_weights(inception_weights, offline=offline)
        dev = resolve_device(device)
        w = weights.warning()
        if w:
            warnings.append(w)
        extraction_fp = Fingerprint(protocol=cfg.protocol, weights_sha256=weights.sha256).to_dict()
    for side in (r, f):
        if side is None:
            continue
        if side.source.kind in ("folder", "images"):
            side.fingerprint = {**extraction_fp, **(preprocessing or {}).get(side.name, {})}
        elif side.source.kind in ("stats", "features"):
            side.fingerprint = side.source.fingerprint
            if side.fingerprint is None and side.source.path is not None:
                what = getattr(side.source, "note", None) or (
                    "a pytorch-fid statistics file?" if side.source.kind == "stats" else "plain features")
                warnings.append(f"{side.flag} {side.source.path} carries no protocol fingerprint ({what}): "
                                "difflens assumes it was made with the same Inception, weights and resize "
                                "protocol")
    if r is not None and f is not None:
        check_compatible(r.fingerprint, f.fingerprint, f"{r.flag} {side_label(r)}",
                         f"{f.flag} {side_label(f)}", cfg.allow_protocol_mismatch, warnings)
    if image_sides:  # built only once every cheap check has passed
        from difflens.features.inception import load_inception

        extractor = load_inception(cfg.protocol, weights=weights, device=dev, impl=cfg.inception_impl)

    # Features: one pass of the extraction loop per image source (under torchrun: each rank its share,
    # whole batches).
    sharded_sides: list[Side] = []
    for side in image_sides:
        from difflens.metrics.extract import extract_features

        part, sharded = dist.shard_source(side.source, ctx, block=cfg.batch_size)
        ext = extract_features(part, extractor, batch_size=cfg.batch_size, strict=cfg.strict,
                               label=side.name, keep_logits=(side.name == "fake" and "is" in chosen),
                               show_progress=show_progress and ctx.is_main)
        side.features, side.logits = ext.pool3, ext.logits
        side_warnings = ext.log.warnings(f"{side.flag} {side_label(side)}")
        if sharded:
            sharded_sides.append(side)
            side_warnings = [w for ws in dist.all_gather_json(side_warnings, ctx) for w in ws]
        warnings.extend(side_warnings)
    if sharded_sides:  # combine the ranks' shares: features only where a metric needs them
        counts = {s.name: dist.total_rows(s.features, ctx) if any(s is t for t in sharded_sides) else s.n
                  for s in (r, f) if s is not None and s.features is not None}
        dim = int(sharded_sides[0].features.shape[1])
        gather = (any(m in chosen for m in ("kid", "pr", "dc")) or cfg.bootstrap > 0
                  or ("fid" in chosen and len(counts) == 2
                      and fid_from_features(counts["real"], counts["fake"], dim)))
        from difflens.metrics.shards import combine_shards

        for side in sharded_sides:
            side.features, side.logits, side.stats = combine_shards(side.features, side.logits, gather, ctx)
    check_dims(r, f)
    result_metrics = compute_values(cfg, chosen, r, f, dev, warnings)

    # Statistics to save: computed (and validated) before anything is written.
    to_save = []
    for name, path in targets.items():
        side = r if name == "real" else f
        assert side is not None
        to_save.append((path, side_stats(side), side.fingerprint, {"source": side.source.describe()}))
    for path, stats, fp, extra in to_save:
        from difflens.metrics.stats import save_stats as _save

        if ctx.is_main:  # rank 0 writes; every rank returns the same result
            _save(path, stats, fp, extra)

    return finalize({
        "metrics": result_metrics,
        "n_real": r.n_or_none if r is not None else None,
        "n_fake": f.n_or_none if f is not None else None,
        "protocol": protocol_record(cfg, chosen, [s.fingerprint for s in (r, f) if s is not None], extractor,
                                    result_metrics),
        "versions": collect_versions(),
        "warnings": warnings,
        **({"distributed": ctx.describe()} if ctx.is_distributed else {}),
    })


def _choose_metrics(cfg: MetricsConfig, r: Side | None, f: Side | None, saving: bool,
                    warnings: list[str]) -> tuple[str, ...]:
    requested = cfg.metrics
    avail = available_metrics(r.source if r else None, f.source if f else None)
    if requested is None:
        chosen = tuple(m for m in METRICS if avail[m] is None)
        if r is not None and f is not None:  # k-NN metrics need more than k samples in a set
            need = {"pr": (cfg.k_pr + 1, cfg.k_pr + 1), "dc": (cfg.k_dc + 1, 1)}
            small = [m for m in chosen if m in need and (r.n < need[m][0] or f.n < need[m][1])]
            for m in small:
                warnings.append(f"{'/'.join(METRIC_KEYS[m])} skipped: k={need[m][0] - 1} needs at least "
                                f"{need[m][0]} samples per set (real {r.n}, fake {f.n})")
            chosen = tuple(m for m in chosen if m not in small)
        if not chosen and not saving:
            reasons = "; ".join(f"{m}: {avail[m]}" for m in METRICS)
            raise DifflensError(f"no metric can be computed from these inputs ({reasons}).",
                                "pass --real and --fake, or --save-stats to only compute statistics")
        return chosen
    bad = [m for m in requested if avail[m] is not None]
    if bad:
        raise DifflensError("; ".join(f"--metrics {m} {avail[m]}" for m in bad) + ".",
                            "drop it from --metrics or give inputs that allow it (" +
                            "; ".join(f"{m} needs {_needs(m)}" for m in bad) + ")")
    return requested


def compute_inception_features(source: Any, *, protocol: str = "tf-legacy",
                               inception_weights: str | Path | None = None, device: str | None = None,
                               batch_size: int = 50, offline: bool = False, strict: bool = False,
                               show_progress: bool = True) -> tuple[Any, Any, dict[str, Any], list[str]]:
    """Inception pool3 features and unbiased logits of an image source (folder, paths, uint8 array).

    Returns ``(pool3 (N, 2048) float32, logits (N, 1008) float32, fingerprint dict, warnings)``.
    """
    from difflens.features.inception import load_inception
    from difflens.features.inception_weights import resolve_inception_weights
    from difflens.metrics.extract import extract_features

    src = resolve_source(source, "source")
    if src.kind not in ("folder", "images"):
        raise DifflensError(f"expected images, got {src.kind}.", "pass a folder or a uint8 image array")
    weights = resolve_inception_weights(inception_weights, offline=offline)
    extractor = load_inception(protocol, weights=weights, device=device)
    ext = extract_features(src, extractor, batch_size=batch_size, strict=strict, label="images",
                           show_progress=show_progress)
    warnings = [w for w in (weights.warning(),) if w] + ext.log.warnings("images")
    return ext.pool3, ext.logits, extractor.fingerprint("pool3").to_dict(), warnings
