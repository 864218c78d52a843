"""Checks that refuse statistics and features no metric can use, each with one clear DifflensError.

Bounds and tolerances, and why:

* **Feature magnitude** ``|x| <= MAX_ABS_FEATURE = 1e12``. The kernels overflow long before float64 does:
  k-NN distances are float32 and ``||x||^2 <= d B^2`` must stay below float32's 3.4e38, so ``B < 4e17`` at
  d = 2048; KID's cubic kernel ``(x.y/d + 1)^3 <= (B^2 + 1)^3`` is float64 and ``np.std`` over subsets
  squares MMD values of that size, ``4 (B^2 + 1)^6 < 1.8e308``, so ``B < 4e25`` (features of 1e30 gave
  KID -6e176 with an infinite std). 1e12 stays below both for any d up to 3e14 and is 8 orders of
  magnitude above real extractors (Inception pool3 is below 100; CLIP and DINOv2 below 1e3).
  Statistics: ``|mu| <= 1e12`` and ``|sigma| <= 1e24`` (B^2).
* **Symmetry** ``max|S - S^T| <= 1e-5 max|S|``: covariances are symmetric by construction; storing one as
  float32 rounds each entry to 6e-8 relative, and a float32 accumulation keeps the two triangles within
  about 1e-6, so 1e-5 accepts every real file and refuses any matrix that is not a covariance.
* **Positive semi-definite**: the Cholesky factorization of ``S + delta I`` with
  ``delta = 1e-5 ||S||_F`` must succeed, i.e. the smallest eigenvalue is above ``-1e-5 ||S||_F``
  (``||S||_F >= max|eigenvalue|``). Rounding ``S`` to float32 moves eigenvalues by at most
  ``||E||_2 <= ||E||_F <= 6e-8 ||S||_F``, so a singular covariance (N <= D) stored as float32 passes with
  a margin of 160; ``-I`` (which gave FID 932) is refused. One Cholesky (the FID itself does two and an
  eigendecomposition); the eigenvalues are computed only to word the error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from difflens.errors import DifflensError

MAX_ABS_FEATURE = 1e12
MAX_ABS_MEAN = MAX_ABS_FEATURE
MAX_ABS_COVARIANCE = MAX_ABS_FEATURE ** 2
SYMMETRY_RTOL = 1e-5
PSD_RTOL = 1e-5


def _max_abs(arr: np.ndarray) -> float:
    return float(np.max(np.abs(arr))) if arr.size else 0.0


def check_features(arr: Any, name: str) -> np.ndarray:
    """``arr`` as an array after checking it is finite and within :data:`MAX_ABS_FEATURE`."""
    arr = np.asarray(arr)
    if not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise DifflensError(f"{name}: {bad} feature value(s) are NaN or infinite.",
                            "recompute the features (look for corrupt images or float16 overflow)")
    big = _max_abs(arr)
    if big > MAX_ABS_FEATURE:
        raise DifflensError(
            f"{name}: feature values reach {big:.3g}, beyond {MAX_ABS_FEATURE:.0e}, where the metric kernels "
            "overflow (real extractors stay below 1e3).",
            "pass the extractor's raw features (not scaled or summed), or rescale them")
    return arr


def check_mean(mu: np.ndarray, name: str) -> None:
    if not np.isfinite(mu).all():
        raise DifflensError(f"{name}: mu contains NaN or infinite values.", "recompute the statistics")
    big = _max_abs(mu)
    if big > MAX_ABS_MEAN:
        raise DifflensError(f"{name}: mu reaches {big:.3g}, beyond {MAX_ABS_MEAN:.0e}, where FID overflows.",
                            "recompute the statistics from the extractor's raw features")


def check_covariance(sigma: np.ndarray, name: str) -> None:
    """Refuse a sigma that is not a finite, symmetric, positive semi-definite (D, D) matrix (tolerances in
    the module docstring)."""
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise DifflensError(f"{name}: sigma must be a square (D, D) matrix, got shape {sigma.shape}.",
                            "store the covariance of the features as sigma")
    if not np.isfinite(sigma).all():
        raise DifflensError(f"{name}: sigma contains NaN or infinite values.", "recompute the statistics")
    scale = _max_abs(sigma)
    if scale > MAX_ABS_COVARIANCE:
        raise DifflensError(f"{name}: sigma reaches {scale:.3g}, beyond {MAX_ABS_COVARIANCE:.0e}, where FID "
                            "overflows.", "recompute the statistics from the extractor's raw features")
    if scale == 0.0:
        return  # the covariance of identical samples
    asym = _max_abs(sigma - sigma.T)
    if asym > SYMMETRY_RTOL * scale:
        raise DifflensError(
            f"{name}: sigma is not symmetric (max |sigma - sigma^T| = {asym:.3g}, {asym / scale:.2g} of its "
            f"largest entry; a covariance is symmetric to {SYMMETRY_RTOL:g}).",
            "store the covariance matrix itself (np.cov(features, rowvar=False)) as sigma")
    sym = 0.5 * (sigma + sigma.T)
    delta = PSD_RTOL * float(np.linalg.norm(sym))
    try:
        from difflens.metrics.fid import blas_single_thread

        with blas_single_thread():
            np.linalg.cholesky(sym + delta * np.eye(sym.shape[0]))
        return
    except np.linalg.LinAlgError:
        pass
    w = np.linalg.eigvalsh(sym)
    raise DifflensError(
        f"{name}: sigma is not positive semi-definite (smallest eigenvalue {w[0]:.3g}, largest "
        f"{w[-1]:.3g}; a covariance has no eigenvalue below -{PSD_RTOL:g} of its norm).",
        "store the covariance matrix itself (np.cov(features, rowvar=False)) as sigma")


def duplicate_rows(features: Any) -> tuple[int, int]:
    """(rows that repeat an earlier row exactly, largest multiplicity of a row).

    A random linear hash (wrapping uint64 arithmetic) of up to 256 evenly spaced 4-byte words of each row
    picks the candidates (exact duplicates always collide); candidates are then compared on all their
    bytes, so the counts are exact. 50,000 x 2048 float32 rows without duplicates: 0.5 s to 3.3 s on the
    shared 2-core machine depending on its load, a small fraction of the k-NN metrics it guards.
    """
    arr = np.ascontiguousarray(features)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return 0, 0
    words = arr.view(np.uint8).reshape(arr.shape[0], -1)
    if words.shape[1] % 4 == 0:
        words = words.view(np.uint32)
    cols = np.unique(np.linspace(0, words.shape[1] - 1, min(words.shape[1], 256)).astype(np.int64))
    sample = words[:, cols].astype(np.uint64)
    weights = np.random.default_rng(0).integers(1, 2**63, size=cols.size, dtype=np.uint64) | np.uint64(1)
    hashes = (sample * weights).sum(axis=1, dtype=np.uint64)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    if candidates.size == 0:
        return 0, 1
    rows: dict[bytes, int] = {}
    for i in candidates:
        key = arr[i].tobytes()
        rows[key] = rows.get(key, 0) + 1
    return int(candidates.size - len(rows)), int(max(rows.values()))


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (e.g. a WebP image)"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x80", "a Python pickle"),
)


def describe_file(path: Any) -> str:
    """What a file is, from its first bytes, for error messages ("an empty file", "a text file", ...)."""
    from pathlib import Path

    try:
        with open(Path(path), "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or exc})"
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "a binary file of unknown format"


def describe_zip(path: Any) -> str:
    """For a zip archive: whether it holds .npy members (an .npz) or something else (a torch checkpoint)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return "a damaged or truncated zip archive"
    if any(n.endswith("data.pkl") for n in names):
        return "a torch checkpoint"
    if names and all(n.endswith(".npy") for n in names):
        return "an .npz archive"
    return f"a zip archive of {len(names)} file(s) that are not NumPy arrays"


def open_npz(path: Any, name: str, expected: str, hint: str) -> Any:
    """``np.load(path, allow_pickle=False)`` of an ``.npz``, or a DifflensError that says what the file
    really is (no library advice: nothing is ever unpickled)."""
    import zipfile

    kind = describe_file(path)
    if kind != "a zip archive":
        raise DifflensError(f"{name} {path} is {kind}, not {expected}.", hint)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        raise DifflensError(f"{name} {path} is {describe_zip(path)}, not {expected}.", hint) from None
    if not hasattr(data, "files"):
        raise DifflensError(f"{name} {path} is not {expected}.", hint)
    return data


def read_npz_array(data: Any, key: str, path: Any, name: str) -> np.ndarray:
    """One array of an open ``.npz``; an object array (which would need unpickling) is refused."""
    import zipfile

    try:
        return data[key]
    except ValueError:
        raise DifflensError(f"{name} {path}: array {key!r} holds Python objects, which difflens does not "
                            "load (only numeric and string arrays).",
                            "save the arrays with numeric dtypes (np.asarray(x, dtype=np.float32))") from None
    except (OSError, zipfile.BadZipFile, EOFError):
        raise DifflensError(f"{name} {path}: array {key!r} is damaged or truncated.",
                            "write the file again") from None


def load_npy(path: Any, name: str, hint: str, mmap: bool = True) -> np.ndarray:
    """``np.load`` of an ``.npy`` (memory-mapped when possible) with difflens's own error text."""
    kind = describe_file(path)
    if kind != "a NumPy .npy array":
        raise DifflensError(f"{name} {path} is {kind}, not a NumPy .npy array.", hint)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError:
        raise DifflensError(f"{name} {path} holds Python objects, which difflens does not load (only numeric "
                            "arrays).", hint) from None
    except (OSError, EOFError):
        raise DifflensError(f"{name} {path} is a damaged or truncated .npy array.", hint) from None
