"""The generic route: any metric of the ``features`` group, from images (or statistics) to JSON entries.

Every metric registered with group ``"features"`` (:mod:`difflens.metrics.base`) runs here, driven only by
its interface: :meth:`~difflens.metrics.base.Metric.requirements` names the extractor layers it reads,
``build_extractors`` builds them (default: the features registry), the one extraction loop
(:func:`difflens.features.extract.feature_batches`) streams each side once through every extractor the
chosen metrics need, each batch goes to every metric that reads that side as a
:class:`~difflens.metrics.base.FeatureBatch` (with the batch's prompts on the fake side; ``prompted``
extractors score image and prompt together), and :meth:`~difflens.metrics.base.Metric.compute` turns the
states into :class:`~difflens.metrics.base.MetricResult`s, which are the JSON entries as they stand. Only
the features a metric keeps in its state stay in memory.

A side given as a statistics ``.npz`` goes to each metric's ``load_side_stats(real, arrays, fingerprint)``
(Frechet-type metrics); a metric without it needs images on that side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, Metric, create_metric

Side = Any  # image items (file list, uint8 array, image source), a statistics .npz path/dict, Features, None


@dataclass
class Features:
    """Precomputed ``(N, D)`` rows of one extractor layer given for a side (``--fake-features``: Inception
    pool3), fed to the metrics as one batch instead of extracting."""

    rows: Any
    key: tuple[str, str] = ("inception", "pool3")

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Accumulated:
    """The chosen metrics after every batch was fed to them (before :meth:`Metric.compute`)."""

    metrics: dict[str, Metric]
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)  # extractor -> {layer: fp}
    warnings: list[str] = field(default_factory=list)
    n: dict[str, int] = field(default_factory=dict)  # images read per side


def _is_stats(side: Side) -> bool:
    if isinstance(side, dict):
        return "mu" in side or "mu_s" in side
    return isinstance(side, (str, Path)) and str(side).lower().endswith(".npz") and not Path(side).is_dir() \
        and _npz_kind(Path(side)) == "stats"


def _npz_kind(path: Path) -> str:
    from difflens.metrics.validate import open_npz

    with open_npz(path, "input", "an .npz of images or statistics", "pass images or statistics") as data:
        keys = set(data.files)
    return "stats" if keys & {"mu", "mu_s"} else "other"


def read_side_stats(side: Side) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """A statistics side as (arrays, fingerprint or None, description)."""
    import json

    import numpy as np

    if isinstance(side, dict):
        arrays = {k: v for k, v in side.items() if k != "fingerprint"}
        fp = side.get("fingerprint")
        return arrays, fp if isinstance(fp, dict) else None, "statistics"
    from difflens.metrics.stats_formats import detect_format, read_foreign_stats
    from difflens.metrics.validate import open_npz, read_npz_array

    path = Path(side)
    with open_npz(path, "statistics file", "an .npz of statistics", "pass a statistics .npz") as data:
        foreign = detect_format(path, list(data.files)) in ("adm", "clean-fid")
        arrays = {} if foreign else {k: read_npz_array(data, k, path, "statistics file") for k in data.files}
    if foreign:  # statistics only: an ADM batch's images stay unread
        fs = read_foreign_stats(path)
        return dict(fs.arrays), fs.fingerprint, f"{path} ({fs.note})"
    fp = None
    if "fingerprint" in arrays:
        try:
            fp = json.loads(str(np.asarray(arrays.pop("fingerprint")).reshape(())))
        except (ValueError, TypeError):
            fp = None
    return arrays, fp if isinstance(fp, dict) else None, str(path)


def _sides_needed(metric: Metric) -> tuple[bool, bool]:
    reqs = metric.requirements()
    return any(r.wants(True) for r in reqs), any(r.wants(False) for r in reqs)


def _check_inputs(metrics: dict[str, Metric], real: Side, fake: Side, prompts: Sequence[str] | None,
                  stats: dict[bool, bool]) -> None:
    """Cheap checks before any network is built: sides present, prompts present and paired. ``stats``:
    whether the real (True) and fake (False) sides are statistics files."""
    for name, metric in metrics.items():
        wants_real, wants_fake = _sides_needed(metric)
        if wants_fake and fake is None:
            raise DifflensError(f"--metrics {name} needs the images to evaluate.",
                                "pass --fake DIR (or --model)")
        if wants_real and real is None:
            raise DifflensError(f"--metrics {name} compares two sets and needs --real.",
                                "pass --real (images or statistics) or drop it from --metrics")
        if any(r.prompts for r in metric.requirements()):
            if not prompts:
                raise DifflensError(f"--metrics {name} scores each image against its prompt, but no prompts "
                                    "were given.", "pass --prompts FILE, or a --fake folder with a "
                                    "manifest.jsonl / metadata.jsonl")
            n = _count(fake)
            if n is not None and len(prompts) != n:
                raise DifflensError(f"{len(prompts)} prompts for {n} images in --fake: they do not pair.",
                                    "give one prompt per image (a manifest.jsonl), or a --prompts file "
                                    "that is cycled over the sorted images")
        for flag, side, wants in (("--real", real, wants_real), ("--fake", fake, wants_fake)):
            if wants and stats[flag == "--real"] and not hasattr(metric, "load_side_stats"):
                raise DifflensError(f"--metrics {name} needs images on {flag}, not statistics.",
                                    f"pass a folder or an image array as {flag}")
            if wants and isinstance(side, Features):
                other = [r for r in metric.requirements() if r.wants(flag == "--real") and r.key != side.key]
                if other:
                    raise DifflensError(f"--metrics {name} reads {other[0].extractor} {other[0].layer}, not "
                                        f"the {side.key[0]} {side.key[1]} features given as {flag}-features.",
                                        f"pass images as {flag}")
        check = getattr(metric, "check_counts", None)  # e.g. fid-inf: too few images for its fit
        if check is not None:
            check(None if stats[True] else _count(real), _count(fake))


def _count(side: Side) -> int | None:
    try:
        return len(side)
    except TypeError:
        return None


def accumulate(names: Sequence[str], real: Side = None, fake: Side = None, *,
               prompts: Sequence[str] | None = None, metric_options: dict[str, dict[str, Any]] | None = None,
               device: str | None = None, offline: bool = False, batch_size: int = 50, strict: bool = False,
               show_progress: bool = False) -> Accumulated:
    """Build the metrics ``names`` (with ``metric_options[name]`` as constructor settings), check the
    inputs, build their extractors, and stream each side once through them into the metrics."""
    options = metric_options or {}
    metrics = {n: create_metric(n, **options.get(n, {})) for n in names}
    stats = {True: _is_stats(real), False: _is_stats(fake)}  # each side looked at once, not per metric
    _check_inputs(metrics, real, fake, prompts, stats)
    out = Accumulated(metrics)
    extractors: dict[str, Any] = {}
    given = {r for r, side in ((True, real), (False, fake)) if isinstance(side, Features) or stats[r]}
    for metric in metrics.values():  # one instance per extractor name, shared by every metric reading it
        wanted = {r.extractor for r in metric.requirements()
                  if not all(s in given for s in (True, False) if r.wants(s))} - set(extractors)
        if wanted:
            built = metric.build_extractors(device, offline)
            extractors.update({k: v for k, v in built.items() if k in wanted})
    for name, ext in extractors.items():
        out.fingerprints[name] = {layer: ext.fingerprint(layer).to_dict() for layer in ext.layers}
    for real_side, side in ((True, real), (False, fake)):
        readers = [m for m in metrics.values() if _sides_needed(m)[0 if real_side else 1]]
        if side is None or not readers:
            continue
        flag = "--real" if real_side else "--fake"
        if isinstance(side, Features):
            from difflens.metrics.base import FeatureBatch

            batch = FeatureBatch(real=real_side, features={side.key: side.rows},
                                 prompts=None if real_side or prompts is None else list(prompts))
            for m in readers:
                m.update(batch)
            out.n[flag] = len(side)
            continue
        if stats[real_side]:
            arrays, fp, where = read_side_stats(side)
            for m in readers:
                m.load_side_stats(real_side, arrays, fp)  # type: ignore[attr-defined]
            out.warnings += [] if fp is not None else [
                f"{flag} {where} carries no protocol fingerprint: difflens assumes it was made with the "
                "same network, weights and preprocessing"]
            continue
        out.n[flag] = _stream(side, readers, extractors, real_side, None if real_side else prompts,
                              batch_size, strict, flag, show_progress, out.warnings)
    return out


def _stream(side: Side, readers: list[Metric], extractors: dict[str, Any], real: bool,
            prompts: Sequence[str] | None, batch_size: int, strict: bool, flag: str, show_progress: bool,
            warnings: list[str]) -> int:
    from difflens.console import progress
    from difflens.features.extract import feature_batches
    from difflens.metrics.base import FeatureBatch
    from difflens.metrics.images import ReadLog

    needed = {r.extractor for m in readers for r in m.requirements() if r.wants(real)}
    log = ReadLog()
    chunks = feature_batches(side, {k: extractors[k] for k in needed}, batch_size=batch_size, strict=strict,
                             label=flag, log=log, prompts=list(prompts) if prompts is not None else None)
    if show_progress:
        chunks = progress(chunks, total=_count(side), description=f"{flag} ({', '.join(sorted(needed))})",
                          unit="img")
    n = 0
    for chunk in chunks:
        batch = FeatureBatch(real=real, features=chunk.features,
                             prompts=[prompts[i] for i in chunk.kept] if prompts is not None else None)
        for m in readers:
            m.update(batch)
        n += len(chunk.kept)
    warnings += log.warnings(flag)
    if n == 0:
        raise DifflensError(f"{flag}: no readable image.", "check the folder or array")
    return n


def compute_registered(names: Sequence[str], real: Side = None, fake: Side = None, *,
                       prompts: Sequence[str] | None = None,
                       metric_options: dict[str, dict[str, Any]] | None = None, device: str | None = None,
                       offline: bool = False, batch_size: int = 50, strict: bool = False, bootstrap: int = 0,
                       seed: int = 0, show_progress: bool = False) -> dict[str, Any]:
    """:func:`accumulate`, then each metric's ``compute``: ``{"metrics": {key: entry}, "protocol": {name:
    {"extractors": fingerprints, "settings": settings}}, "warnings": [...]}``."""
    acc = accumulate(names, real, fake, prompts=prompts, metric_options=metric_options, device=device,
                     offline=offline, batch_size=batch_size, strict=strict, show_progress=show_progress)
    ctx = ComputeContext(chosen=tuple(names), device=device, warnings=acc.warnings, bootstrap=int(bootstrap),
                         seed=int(seed))
    entries: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    for name, metric in acc.metrics.items():
        for key, res in metric.compute(ctx).items():
            entries[key] = res.to_json()
            ctx.warnings += [w for w in res.warnings if w not in ctx.warnings]
        used = {r.extractor for r in metric.requirements()}
        protocol[name] = {
            "extractors": {e: acc.fingerprints[e] for e in sorted(used) if e in acc.fingerprints},
            "settings": metric.settings()}
    return {"metrics": entries, "protocol": protocol, "warnings": ctx.warnings}
