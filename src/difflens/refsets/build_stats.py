"""Reference statistics, computed once: ``difflens stats build --real SPEC --out FILE.npz``.

One Inception pass over a reference set (a dataset spec or a folder of images; subset and reference
preprocessing included) gives its Gaussian statistics, stored with the protocol fingerprint and the dataset
identity in the metrics' statistics format (:func:`difflens.metrics.stats.save_stats`): ``mu``, ``sigma``,
``n``, ``fingerprint``, plus

* ``dataset``: JSON (0-d string) with the identity (kind, name/path, config, split, revision, fingerprint,
  columns, subset seed and row-index digest), the reference preprocessing, the read report (decoded and
  skipped counts, the SHA-256 of the decoded pixels) and the warnings;
* ``subset_rows`` (int64): the selected row indices; ``skipped_rows`` (int64): rows that failed to decode;
* with ``keep_features``: ``features`` (N, 2048) float32 pool3 features: ``metrics --real FILE`` then
  reads the file as features, so KID, precision/recall and density/coverage work too (``--real-features
  FILE`` reads the same features);
* with ``clip_model``: ``clip_features`` (N, D) float32 CLIP image embeddings under the CMMD protocol, and
  ``clip_fingerprint`` (JSON: model, weights digest, preprocessing);
* with ``stats_format="adm"`` (``--format adm``): ADM-style statistics, ``mu_s``/``sigma_s`` of sFID's
  Inception ``spatial`` layer and ``fingerprint_s``, so the ADM evaluator's ``read_statistics`` finds
  ``mu``, ``sigma``, ``mu_s`` and ``sigma_s``.

Every metrics command then accepts the file as ``--real``: the same FID as computing from the images.
Images whose pool3 features repeat exactly (duplicates in the reference set) are counted and reported as a
warning, since they make the k-NN metrics degenerate.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from difflens.errors import DifflensError

#: Layouts of the written file: difflens's (pytorch-fid compatible) or ADM-style (adds sFID's mu_s/sigma_s).
StatsFileFormat = Literal["difflens", "adm"]

DEFAULT_BATCH_SIZE: int | None = None  # by device: STATS_BATCH_CPU / STATS_BATCH_GPU (metrics.config)


@dataclass
class BuildResult:
    """What ``build_reference_stats`` wrote."""

    out: Path
    n: int
    fingerprint: dict[str, Any]
    dataset: dict[str, Any]
    kept_features: bool
    clip_features: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


def check_out_path(out: str | Path) -> Path:
    """Validate ``--out`` before any work: an ``.npz`` path that is not a folder."""
    path = Path(out).expanduser()
    if path.suffix != ".npz":
        raise DifflensError(f"--out {path} must end in .npz.", f"pass e.g. --out {path.with_suffix('.npz')}")
    if path.is_dir():
        raise DifflensError(f"--out {path} is a folder.", "pass a file path ending in .npz")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DifflensError(f"--out {path}: {parent} is not a folder.", "pass a path inside a folder")
    return path


def build_reference_stats(real: str, out: str | Path, *, keep_features: bool = False,
                          image_column: str = "image", num: int | None = None, subset_seed: int = 0,
                          reference_size: int | None = None, inception_weights: str | Path | None = None,
                          protocol: str = "tf-legacy", offline: bool = False,
                          batch_size: int | None = DEFAULT_BATCH_SIZE, device: str | None = None,
                          clip_model: str | None = None, streaming: bool = False, strict: bool = False,
                          show_progress: bool = True, workers: int | None = None,
                          stats_format: StatsFileFormat = "difflens") -> BuildResult:
    """Compute and save the reference statistics of ``real`` (see the module docstring).

    Everything cheap is validated before the first image is decoded (output path, dataset, split, columns,
    subset, sizes, Inception weights, CLIP model); the file is written atomically at the end, so a failure
    leaves nothing behind. ``stats_format="adm"`` also stores sFID's statistics ``mu_s``/``sigma_s`` (the
    Inception ``spatial`` layer, 2023-d; :func:`difflens.metrics.stats_formats.adm_extra`), which the ADM
    evaluator's ``read_statistics`` reads next to ``mu``/``sigma``.
    """
    import numpy as np

    from difflens.allocator import bound_heap_growth
    from difflens.console import progress
    from difflens.features.base import PROTOCOLS
    from difflens.features.extract import feature_batches
    from difflens.features.inception import load_inception
    from difflens.features.inception_weights import resolve_inception_weights
    from difflens.metrics.stats import GaussianStats, save_stats
    from difflens.models import resolve_device
    from difflens.refsets.dataset_source import open_image_source
    from difflens.versions import collect_versions

    bound_heap_growth()  # a long streaming build that keeps only sums: bounded heap (see difflens.allocator)
    path = check_out_path(out)
    if stats_format not in ("difflens", "adm"):
        raise DifflensError(f"unknown --format {stats_format!r}.", "use difflens or adm")
    if batch_size is not None and batch_size < 1:
        raise DifflensError(f"--batch-size must be at least 1, got {batch_size}.", "use e.g. --batch-size 16")
    if protocol not in PROTOCOLS:
        raise DifflensError(f"unknown --protocol {protocol!r}.", f"use one of {', '.join(PROTOCOLS)}")
    source = open_image_source(str(real), image_column=image_column, num=num, subset_seed=subset_seed,
                               reference_size=reference_size, offline=offline, streaming=streaming,
                               strict=strict)
    dev = resolve_device(device)
    if batch_size is None:
        from difflens.metrics.config import STATS_BATCH_CPU, STATS_BATCH_GPU

        batch_size = STATS_BATCH_CPU if str(dev).startswith("cpu") else STATS_BATCH_GPU
    weights = resolve_inception_weights(inception_weights, offline=offline)
    warnings: list[str] = []
    if weights.warning():
        warnings.append(str(weights.warning()))
    inception = load_inception(protocol, weights=weights, device=dev)
    extractors: dict[str, Any] = {inception.name: inception}
    clip = None
    if clip_model is not None:
        from difflens.features.clip import PROTOCOL_CMMD, load_clip

        clip_ext = load_clip(clip_model, PROTOCOL_CMMD, device=dev, offline=offline)
        clip = clip_ext.encoder
        extractors[clip_ext.name] = clip_ext

    t0 = time.perf_counter()
    row_digests: set[bytes] = set()
    duplicates = 0
    stats = GaussianStats.empty(2048)
    feats: list[Any] = []
    clip_feats: list[Any] = []
    # one pass: each image decoded once, fed to Inception (and CLIP); only the statistics (and, when
    # asked, the features) are kept, so memory does not grow with the number of images
    keep = [(name, "pool3" if ext is inception else "image_embeds") for name, ext in extractors.items()]
    spatial = GaussianStats.empty(2023) if stats_format == "adm" else None
    if spatial is not None:
        keep.append((inception.name, "spatial"))
    chunks: Any = feature_batches(source, extractors, batch_size=batch_size, keep=keep, strict=strict,
                                  label=f"--real {real}", workers=workers, split_sizes=True)
    if show_progress:
        chunks = progress(chunks, total=len(source), description="Inception reference", unit="img")
    for chunk in chunks:
        if not chunk.kept:
            continue
        pool3 = chunk.features[(inception.name, "pool3")]
        stats = stats.merge(GaussianStats.from_features(pool3))
        if spatial is not None:
            spatial = spatial.merge(GaussianStats.from_features(chunk.features[(inception.name, "spatial")]))
        for row in np.ascontiguousarray(pool3):
            digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            duplicates += digest in row_digests
            row_digests.add(digest)
        if keep_features:
            feats.append(pool3.astype(np.float32))
        if clip is not None:
            clip_feats.append(np.asarray(chunk.features[(clip_ext.name, "image_embeds")], dtype=np.float32))
    seconds = time.perf_counter() - t0
    warnings.extend(source.warnings)
    if duplicates:
        warnings.append(f"{duplicates} of {stats.n} images have exactly the same Inception features as an "
                        "earlier image (duplicates in the reference set): precision, recall, density and "
                        "coverage against this set are biased, and degenerate where an image repeats more "
                        "than k times; deduplicate the data")
    if stats.n < 2:
        raise DifflensError(f"--real {real}: only {stats.n} image(s) could be decoded out of {len(source)}; "
                            "at least 2 are needed.", "check the image column and the data")

    fingerprint = {**inception.fingerprint("pool3").to_dict(), **source.preprocessing}
    dataset = {"identity": source.identity, "preprocessing": source.preprocessing, "read": source.report(),
               "warnings": warnings, "versions": {**collect_versions(), "datasets": _version("datasets")},
               "inception_weights": {"path": str(weights.path), "sha256": weights.sha256,
                                     "source": weights.source, "random_init": weights.random_init},
               "seconds": seconds}
    extra: dict[str, Any] = {
        "dataset": np.asarray(json.dumps(dataset, sort_keys=True, default=str)),
        "subset_rows": np.asarray(source.rows, dtype=np.int64),
        "skipped_rows": np.asarray([s.row for s in source.skipped], dtype=np.int64),
    }
    if keep_features:
        extra["features"] = np.concatenate(feats)
    if clip is not None:
        extra["clip_features"] = np.concatenate(clip_feats)
        clip_fp = {"model_id": clip.model_id, "weights_digest": clip.weights_digest,
                   "preprocessing": clip.preprocessing(PROTOCOL_CMMD), "dtype": clip.dtype,
                   **source.preprocessing}
        extra["clip_fingerprint"] = np.asarray(json.dumps(clip_fp, sort_keys=True, default=str))
    if spatial is not None:
        from difflens.metrics.stats_formats import adm_extra

        fp_s = {**inception.fingerprint("spatial").to_dict(), **source.preprocessing}
        extra.update(adm_extra(spatial, fp_s))
    save_stats(path, stats, fingerprint, extra)
    return BuildResult(out=path, n=stats.n, fingerprint=fingerprint, dataset=dataset,
                       kept_features=keep_features, clip_features=clip is not None, seconds=seconds,
                       warnings=warnings)


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def read_dataset_info(path: str | Path) -> dict[str, Any] | None:
    """The ``dataset`` record of a file written by :func:`build_reference_stats` (None if absent)."""
    import numpy as np

    with np.load(Path(path), allow_pickle=False) as data:
        if "dataset" not in data.files:
            return None
        return json.loads(str(data["dataset"].reshape(())))
