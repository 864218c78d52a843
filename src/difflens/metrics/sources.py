"""Resolve a ``--real``/``--fake`` spec (or a Python object) into a typed source.

Kinds:

* ``folder``: a folder of image files (see :mod:`difflens.metrics.images`), or a list of image paths;
* ``images``: a uint8 ``(N, H, W, 3)`` array, in memory or in a ``.npy``/``.npz`` file;
* ``stats``: Gaussian statistics (``.npz`` with ``mu`` and ``sigma``: difflens or pytorch-fid format;
  a :class:`~difflens.metrics.stats.GaussianStats`; a dict with ``mu``/``sigma``); FID only;
* ``features``: precomputed ``(N, D)`` features (``.npy``, or ``.npz`` with ``features`` and optionally
  ``logits`` for IS), or a 2-D float array in memory. A statistics file that also carries its features
  (``difflens stats build --keep-features``) reads as features, so KID and the k-NN metrics work with it
  as ``--real``; its ``n`` and ``mu`` must agree with the features.

Nothing here imports torch: FID from two statistics files stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from difflens.errors import DifflensError
from difflens.metrics.images import IMAGE_EXTENSIONS, check_image_array, list_image_files


@dataclass
class FolderSource:
    """Image files read one by one (a folder, or an explicit list of paths)."""

    files: list[Path]
    path: Path | None = None
    kind: str = "folder"

    @property
    def n(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        return f"{self.path} ({self.n} image files)" if self.path else f"{self.n} image files"


@dataclass
class ArraySource:
    """uint8 images: one ``(N, H, W, 3)`` array (possibly memory-mapped) or a list of ``(H, W, 3)`` arrays
    (sizes may differ)."""

    images: Any
    path: Path | None = None
    kind: str = "images"

    @property
    def n(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        if isinstance(self.images, list):
            return f"{self.n} image arrays"
        shape = "x".join(str(s) for s in self.images.shape)
        return f"{self.path} (uint8 {shape})" if self.path else f"array (uint8 {shape})"


@dataclass
class StatsSource:
    """Gaussian statistics (FID only); ``fingerprint`` is None for files made by other tools."""

    stats: Any
    fingerprint: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    kind: str = "stats"
    note: str | None = None  # what a file made by another tool is (ADM, clean-fid): for the warnings

    @property
    def n(self) -> int:
        return int(self.stats.n)

    def describe(self) -> str:
        where = str(self.path) if self.path else "statistics"
        return f"{where} (statistics, n={self.n}, dim={self.stats.dim})"


@dataclass
class FeaturesSource:
    """Precomputed ``(N, D)`` features, and optionally ``(N, C)`` logits for IS."""

    features: Any
    logits: Any | None = None
    fingerprint: dict[str, Any] | None = None
    path: Path | None = None
    kind: str = "features"

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def describe(self) -> str:
        where = str(self.path) if self.path else "features"
        return f"{where} (features {self.features.shape[0]}x{self.features.shape[1]})"


Source = Union[FolderSource, ArraySource, StatsSource, FeaturesSource]

STATS_KEYS = ("mu", "sigma")


def _check_features(arr: Any, name: str) -> Any:
    import numpy as np

    from difflens.metrics.validate import check_features

    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DifflensError(f"{name}: expected a 2-D (N, D) float feature array, got {arr.dtype} "
                            f"{tuple(arr.shape)}.", "save features as np.save(path, feats) with feats (N, D)")
    return check_features(np.asarray(arr), name)


def _fingerprint(data: Any, path: Path, name: str) -> dict[str, Any] | None:
    import json

    from difflens.metrics.validate import read_npz_array

    if "fingerprint" not in data.files:
        return None
    raw = read_npz_array(data, "fingerprint", path, name)
    try:
        fp = json.loads(str(raw.reshape(())))
    except (ValueError, TypeError):
        fp = False
    if not isinstance(fp, (dict, type(None))):  # JSON null: saved without a fingerprint
        raise DifflensError(f"{name}: {path} has an unreadable fingerprint (not a JSON object).",
                            "recompute the file with difflens")
    return fp


def _check_stats_features(data: Any, feats: Any, path: Path, name: str) -> None:
    """A statistics file with features: its ``n`` and ``mu`` must describe those features."""
    import numpy as np

    from difflens.metrics.validate import read_npz_array

    fix = "rebuild the file (difflens stats build --keep-features), or drop the 'features' array"
    if "n" in data.files:
        n = read_npz_array(data, "n", path, name)
        recorded = int(n.reshape(())) if n.size == 1 and np.issubdtype(n.dtype, np.number) else None
        if recorded != feats.shape[0]:
            raise DifflensError(f"{name}: {path} records n={recorded} but holds {feats.shape[0]} feature "
                                "rows.", fix)
    mu = np.asarray(read_npz_array(data, "mu", path, name), dtype=np.float64)
    if mu.shape != (feats.shape[1],):
        raise DifflensError(f"{name}: {path} has mu {mu.shape} but features {tuple(feats.shape)}.", fix)
    mean = np.asarray(feats).mean(axis=0, dtype=np.float64)
    # the same float32 rows summed in another order: equal to ~1e-12 relative; 1e-6 leaves a wide margin
    if not np.allclose(mean, mu, rtol=1e-6, atol=1e-6 * (float(np.abs(mu).max()) + 1e-30)):
        raise DifflensError(f"{name}: {path} has a mu that is not the mean of its features "
                            f"(max difference {float(np.abs(mean - mu).max()):.3g}).", fix)


def _from_npz(path: Path, name: str, want_features: bool) -> Source:
    from difflens.metrics.validate import open_npz, read_npz_array

    layouts = ("save one of these layouts: 'mu' and 'sigma' (statistics), 'images' (uint8 N,H,W,3) or "
               "'features' (N, D)")
    with open_npz(path, f"{name}:", "an .npz archive of arrays", layouts) as data:
        keys = list(data.files)
    from difflens.metrics.stats_formats import foreign_source  # ADM and clean-fid files

    foreign = foreign_source(path, keys, name, want_features)
    if foreign is not None:
        return foreign
    with open_npz(path, f"{name}:", "an .npz archive of arrays", layouts) as data:
        found = ", ".join(keys) or "none"
        has_stats = all(k in keys for k in STATS_KEYS)
        partial = [k for k in STATS_KEYS if k not in keys] if any(k in keys for k in STATS_KEYS) else []
        if partial and "features" not in keys:
            raise DifflensError(
                f"{name}: {path} is a statistics file without {' and '.join(partial)} (arrays found: "
                f"{found}).", "a statistics file needs 'mu' (D,) and 'sigma' (D, D); recompute it with "
                "difflens stats build or metrics --save-stats")
        if "features" in keys or (want_features and len(keys) == 1):
            feats = _check_features(read_npz_array(data, "features" if "features" in keys else keys[0],
                                                   path, name), f"{name} {path}")
            logits = read_npz_array(data, "logits", path, name) if "logits" in keys else None
            if logits is not None:
                if logits.ndim != 2 or logits.shape[0] != feats.shape[0]:
                    raise DifflensError(f"{name}: logits {tuple(logits.shape)} do not match features "
                                        f"{tuple(feats.shape)}.", "store (N, C) logits for the same N rows")
                logits = _check_features(logits, f"{name} {path} (logits)")
            if has_stats:
                _check_stats_features(data, feats, path, name)
            return FeaturesSource(features=feats, logits=logits, fingerprint=_fingerprint(data, path, name),
                                  path=path)
        if has_stats and not want_features:
            from difflens.metrics.stats import load_stats

            stats, fingerprint, extra = load_stats(path)
            return StatsSource(stats=stats, fingerprint=fingerprint, extra=dict(extra or {}), path=path)
        if want_features:
            raise DifflensError(f"{name}: {path} holds arrays {found}, not features.",
                                "store the (N, D) features under the key 'features' (difflens stats build "
                                "--keep-features does)")
        if "images" in keys or len(keys) == 1:
            arr = read_npz_array(data, "images" if "images" in keys else keys[0], path, name)
            if arr.ndim == 2:
                return FeaturesSource(features=_check_features(arr, f"{name} {path}"), path=path)
            check_image_array(arr, f"{name} ({path})")
            return ArraySource(images=arr, path=path)
    raise DifflensError(f"{name}: {path} holds arrays {found}; expected 'mu' and 'sigma' (statistics), "
                        "'images' (uint8 N,H,W,3) or 'features' (N, D).", layouts)


def _from_path(path: Path, name: str, want_features: bool) -> Source:
    import numpy as np

    if not path.exists():
        from difflens.metrics.stats_formats import select_array  # FILE.npz:KEY, e.g. an ADM batch's arr_0

        selected = select_array(str(path), name, want_features)
        if selected is not None:
            return selected
        raise DifflensError(f"{name}: {path} does not exist.", "check the path")
    if path.is_dir():
        if want_features:
            raise DifflensError(f"{name}: {path} is a folder, not a feature file.",
                                "pass an (N, D) .npy file")
        files = list_image_files(path)
        if not files:
            raise DifflensError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}.",
                                "point to a folder that holds images (searched recursively)")
        return FolderSource(files=files, path=path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _from_npz(path, name, want_features)
    if suffix == ".npy":
        from difflens.metrics.validate import load_npy

        arr = load_npy(path, f"{name}:", "pass a .npy of uint8 images (N, H, W, 3) or features (N, D)")
        if arr.ndim == 2 or want_features:
            return FeaturesSource(features=_check_features(np.asarray(arr), f"{name} {path}"), path=path)
        check_image_array(arr, f"{name} ({path})")
        return ArraySource(images=arr, path=path)
    if suffix in IMAGE_EXTENSIONS:
        return FolderSource(files=[path], path=path)
    raise DifflensError(f"{name}: cannot use {path} (unknown kind {suffix or 'without suffix'}).",
                        "pass a folder of images, a .npy/.npz of uint8 images (N, H, W, 3), a statistics "
                        ".npz (mu, sigma) or features (N, D)")


def resolve_source(spec: Any, name: str, want_features: bool = False) -> Source:
    """Turn a path, array, statistics object or list of image paths into a typed source.

    ``name`` (e.g. ``"--real"``) prefixes error messages. ``want_features`` forces the features reading
    (``--real-features``/``--fake-features``). Raises :class:`DifflensError` for anything unusable.
    """
    if isinstance(spec, (FolderSource, ArraySource, StatsSource, FeaturesSource)):
        return spec
    if isinstance(spec, (str, Path)):
        return _from_path(Path(spec).expanduser(), name, want_features)
    if hasattr(spec, "m2") and hasattr(spec, "mean") and hasattr(spec, "n"):
        import numpy as np

        from difflens.metrics.validate import check_covariance, check_mean

        check_mean(np.asarray(spec.mean, dtype=np.float64), name)
        check_covariance(np.asarray(spec.covariance(), dtype=np.float64), name)
        return StatsSource(stats=spec)
    if isinstance(spec, dict) and all(k in spec for k in STATS_KEYS):
        import numpy as np

        from difflens.metrics.stats import stats_from_mu_sigma

        n = int(spec.get("n", 0))
        stats = stats_from_mu_sigma(np.asarray(spec["mu"]), np.asarray(spec["sigma"]), n, name=name)
        return StatsSource(stats=stats, fingerprint=spec.get("fingerprint"))
    if hasattr(spec, "shape") and hasattr(spec, "dtype"):
        import numpy as np

        arr = spec.detach().cpu().numpy() if hasattr(spec, "detach") else np.asarray(spec)
        if arr.ndim == 2 or want_features:
            return FeaturesSource(features=_check_features(arr, name))
        check_image_array(arr, name)
        return ArraySource(images=arr)
    if isinstance(spec, Sequence) and spec and all(hasattr(a, "shape") for a in spec):
        import numpy as np

        arrays = [np.asarray(a) for a in spec]
        for i, a in enumerate(arrays):
            check_image_array(a[None], f"{name}[{i}]")
        return ArraySource(images=arrays)
    if isinstance(spec, Sequence) and spec and all(isinstance(p, (str, Path)) for p in spec):
        files = [Path(p) for p in spec]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DifflensError(f"{name}: {len(missing)} listed image file(s) do not exist (first: "
                                f"{missing[0]}).", "check the paths")
        return FolderSource(files=files)
    raise DifflensError(f"{name}: cannot use an input of type {type(spec).__name__}.",
                        "pass a folder, an image array (N, H, W, 3) uint8, statistics or (N, D) features")
