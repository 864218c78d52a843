"""Statistics and reference files made by other tools: the ADM evaluator's reference batches and clean-fid's
statistics, read as difflens sources; and ADM-style statistics written by difflens.

* **ADM** (openai/guided-diffusion ``evaluations/evaluator.py``): an ``.npz`` with ``arr_0``, the images as
  uint8 ``(N, H, W, 3)`` (``read_activations`` reads ``arr_0``), and, in a reference batch, ``mu``/``sigma``
  (pool_3, 2048-d) and ``mu_s``/``sigma_s`` (the first 7 channels of ``mixed_6/conv``, 2023-d), read by
  ``read_statistics`` instead of recomputing them; a sample batch may add ``arr_1`` (class labels).
  difflens reads it as the evaluator does: a file with statistics is statistics (FID from ``mu``/``sigma``,
  sFID from ``mu_s``/``sigma_s``); a file without them is images (``arr_0``). ``FILE.npz:arr_0`` selects the
  images of a reference batch that also holds statistics (any ``FILE.npz:KEY`` selects one array).
  ``arr_0`` is memory-mapped when stored uncompressed (``np.savez``), so a 10,000-image batch is not read
  into memory at once.
* **clean-fid** (``cleanfid/features.py`` ``get_reference_statistics``, ``cleanfid/fid.py``
  ``make_custom_stats``): ``mu``/``sigma`` in a file named ``{name}_{mode}{_model}_{split}_{res}.npz``
  (lower case; mode ``clean``, ``legacy_pytorch`` or ``legacy_tensorflow``; ``_clip_vit_b_32`` for CLIP-FID,
  nothing for Inception; ``res`` is ``na`` for custom statistics), and the KID features ``feats`` (N, D) in
  ``..._kid.npz``. The content is pytorch-fid's layout: the file name says the protocol.

None of these files records a difflens protocol fingerprint, so using one gives the usual warning, naming
the format and what the file name or layout tells (:attr:`ForeignStats.note`). Files that lack an expected
array are one error naming the file and the missing key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from difflens.errors import DifflensError

StatsFormat = Literal["difflens", "pytorch-fid", "clean-fid", "adm"]

ADM_IMAGES = "arr_0"
ADM_STATS = (("mu", "sigma"), ("mu_s", "sigma_s"))
CLEANFID_MODES = ("clean", "legacy_pytorch", "legacy_tensorflow")
#: clean-fid mode -> the difflens --protocol with the same resize (None: no difflens protocol matches)
CLEANFID_PROTOCOL: dict[str, str | None] = {"clean": "clean", "legacy_tensorflow": "tf-legacy",
                                            "legacy_pytorch": None}
_CLEANFID_NAME = re.compile(r"^(?P<name>.+)_(?P<mode>clean|legacy_pytorch|legacy_tensorflow)"
                            r"(?:_(?P<model>clip_vit_b_32))?_(?P<split>[a-z0-9]+)_(?P<res>[a-z0-9]+)"
                            r"(?P<kid>_kid)?\.npz$")


@dataclass(frozen=True)
class CleanFidName:
    """What a clean-fid statistics file name says."""

    name: str
    mode: str
    model: str  # inception_v3 or clip_vit_b_32
    split: str
    res: str
    kid: bool

    def describe(self) -> str:
        what = "CLIP-FID (ViT-B/32; difflens fd-clip)" if self.model == "clip_vit_b_32" else "Inception FID"
        protocol = CLEANFID_PROTOCOL[self.mode]
        same = (f"its resize is difflens --protocol {protocol}" if protocol and self.model == "inception_v3"
                else "no difflens --protocol has its resize" if protocol is None else "")
        return (f"clean-fid {what} statistics of {self.name}, mode {self.mode}, split {self.split}, "
                f"resolution {self.res}, per the file name" + (f"; {same}" if same else ""))


def parse_cleanfid_name(filename: str) -> CleanFidName | None:
    """The parts of a clean-fid statistics file name (``{name}_{mode}{_model}_{split}_{res}[_kid].npz``),
    or None when the name does not follow that convention."""
    m = _CLEANFID_NAME.match(Path(filename).name)
    if m is None or Path(filename).name != Path(filename).name.lower():
        return None
    return CleanFidName(m["name"], m["mode"], m["model"] or "inception_v3", m["split"], m["res"],
                        bool(m["kid"]))


@dataclass
class ForeignStats:
    """Statistics read from a file: FID's (``mu``/``sigma``), sFID's (``mu_s``/``sigma_s``, ADM) and what
    the file is. ``fid``/``sfid`` are :class:`~difflens.metrics.stats.GaussianStats` or None."""

    path: Path
    format: StatsFormat
    fid: Any = None
    sfid: Any = None
    images_shape: tuple[int, ...] | None = None
    cleanfid: CleanFidName | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the statistics arrays as stored
    fingerprint: dict[str, Any] | None = None  # difflens's, when difflens wrote the file

    @property
    def note(self) -> str:
        """What the file is, for the no-fingerprint warning."""
        if self.format == "adm":
            images = (f" and {self.images_shape[0]} images in arr_0" if self.images_shape else "")
            return ("an ADM reference batch (guided-diffusion evaluator: TF Inception pool_3 mu/sigma, "
                    f"mixed_6/conv sFID mu_s/sigma_s{images}; its resize is difflens --protocol tf-legacy)")
        if self.format == "clean-fid" and self.cleanfid is not None:
            return self.cleanfid.describe()
        return "a pytorch-fid statistics file?"


def detect_format(path: str | Path, keys: list[str] | set[str]) -> StatsFormat:
    """The format of an ``.npz`` from its array names (and, for clean-fid, its file name)."""
    keys = set(keys)
    if ADM_IMAGES in keys or "mu_s" in keys or "sigma_s" in keys:
        return "adm"  # also an ADM-style file written by difflens (stats build --format adm)
    if "fingerprint" in keys or "n" in keys:
        return "difflens"
    if parse_cleanfid_name(Path(path).name) is not None:
        return "clean-fid"
    return "pytorch-fid"


def _missing_error(path: Path, what: str, missing: list[str], found: list[str], adm: bool) -> DifflensError:
    fix = ("an ADM reference batch has arr_0 (uint8 N,H,W,3) and mu, sigma, mu_s, sigma_s; rebuild it with "
           "difflens stats build --format adm or the ADM evaluator") if adm else \
        "a statistics file needs mu (D,) and sigma (D, D); recompute it"
    return DifflensError(f"{what} {path} lacks {' and '.join(repr(k) for k in missing)} (arrays found: "
                         f"{', '.join(sorted(found)) or 'none'}).", fix)


def read_foreign_stats(path: str | Path, name: str = "statistics file") -> ForeignStats:
    """Read an ADM or clean-fid (or plain pytorch-fid) statistics file without reading its images."""
    from difflens.metrics.stats import stats_from_mu_sigma
    from difflens.metrics.validate import open_npz, read_npz_array

    path = Path(path)
    hint = "pass an .npz with mu and sigma (pytorch-fid, clean-fid) or an ADM reference batch"
    with open_npz(path, name, "an .npz of statistics", hint) as data:
        keys = list(data.files)
        fmt = detect_format(path, keys)
        what = "ADM reference batch" if fmt == "adm" else name
        present = [pair for pair in ADM_STATS if any(k in keys for k in pair)]
        if fmt == "adm" and present:
            present = list(ADM_STATS)  # the evaluator reads all four (read_statistics)
        missing = [k for pair in present for k in pair if k not in keys]
        if missing:
            raise _missing_error(path, what, missing, keys, fmt == "adm")
        arrays = {k: read_npz_array(data, k, path, name) for pair in present for k in pair}
        n = _count(read_npz_array(data, "n", path, name), path, name) if "n" in keys else None
        fingerprint = _json(read_npz_array(data, "fingerprint", path, name), path, name) \
            if "fingerprint" in keys else None
    if n is not None:
        arrays["n"] = np.asarray(n, dtype=np.int64)
    out = ForeignStats(path=path, format=fmt, arrays=arrays, fingerprint=fingerprint,
                       cleanfid=parse_cleanfid_name(path.name) if fmt == "clean-fid" else None)
    if "mu" in arrays:
        out.fid = stats_from_mu_sigma(arrays["mu"], arrays["sigma"], n, name=f"{what} {path} (mu, sigma)")
    if "mu_s" in arrays:
        out.sfid = stats_from_mu_sigma(arrays["mu_s"], arrays["sigma_s"], n,
                                       name=f"{what} {path} (mu_s, sigma_s)")
    if ADM_IMAGES in keys:
        out.images_shape = npz_shape(path, ADM_IMAGES)
    return out


def npz_shape(path: str | Path, key: str) -> tuple[int, ...] | None:
    """The shape of array ``key`` of an ``.npz`` from its ``.npy`` header (no data read), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            return tuple(int(s) for s in reader(f)[0])
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None


def npz_array(path: str | Path, key: str, name: str = "input") -> np.ndarray:
    """Array ``key`` of an ``.npz``: memory-mapped (read-only) when stored uncompressed, as ``np.savez``
    writes it; read whole when compressed. Object arrays are refused (nothing is unpickled)."""
    import struct
    import zipfile

    path = Path(path)
    member = f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member)
    except KeyError:
        raise DifflensError(f"{name} {path} has no array {key!r}.",
                            "name one of the arrays it holds") from None
    except (OSError, zipfile.BadZipFile):
        raise DifflensError(f"{name} {path} is not a readable .npz archive.",
                            "write the file again") from None
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
            if head[:4] == b"PK\x03\x04":
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = reader(f)
                offset = f.tell()
                if not dtype.hasobject:
                    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                                     order="F" if fortran else "C")
    from difflens.metrics.validate import open_npz, read_npz_array

    with open_npz(path, name, "an .npz archive of arrays", "write the file again") as data:
        return read_npz_array(data, key, path, name)


def _count(arr: np.ndarray, path: Path, name: str) -> int | None:
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
        raise DifflensError(f"{name} {path} has a malformed 'n' entry {arr.dtype} {arr.shape}.",
                            "recompute the file")
    n = int(arr.reshape(()))
    return None if n < 0 else n


def _json(arr: np.ndarray, path: Path, name: str) -> dict[str, Any] | None:
    import json

    try:
        value = json.loads(str(arr.reshape(())))
    except (ValueError, TypeError):
        value = False
    if not isinstance(value, (dict, type(None))):
        raise DifflensError(f"{name} {path} has an unreadable fingerprint (not a JSON object).",
                            "recompute the file")
    return value


def adm_extra(spatial: Any, fingerprint: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """The arrays an ADM-style statistics file adds to difflens's (``mu``, ``sigma``, ``n``,
    ``fingerprint``): sFID's ``mu_s`` and ``sigma_s`` (unbiased covariance, as ``np.cov`` in the ADM
    evaluator's ``compute_statistics``) and ``fingerprint_s`` (JSON) of the spatial layer."""
    import json

    return {"mu_s": np.asarray(spatial.mean, dtype=np.float64),
            "sigma_s": np.asarray(spatial.covariance(), dtype=np.float64),
            "fingerprint_s": np.asarray(json.dumps(fingerprint, sort_keys=True))}


def save_adm_stats(path: str | Path, fid: Any, sfid: Any, fingerprint: dict[str, Any] | None = None,
                   fingerprint_s: dict[str, Any] | None = None, images: Any = None) -> None:
    """Write ADM-style statistics: ``mu``/``sigma`` (FID), ``mu_s``/``sigma_s`` (sFID), ``n`` and the
    fingerprints, and with ``images`` (uint8 N,H,W,3) ``arr_0``, as an ADM reference batch holds them.
    Atomic; everything is validated first (:func:`difflens.metrics.stats.save_stats`)."""
    from difflens.metrics.images import check_image_array
    from difflens.metrics.stats import save_stats

    if fid.n != sfid.n:
        raise DifflensError(f"FID statistics of {fid.n} images but sFID statistics of {sfid.n}.",
                            "compute both from the same images")
    extra = adm_extra(sfid, fingerprint_s)
    if images is not None:
        check_image_array(np.asarray(images), "images")
        extra[ADM_IMAGES] = np.asarray(images)
    save_stats(path, fid, fingerprint, extra)  # type: ignore[arg-type]  # None: saved as JSON null


def foreign_source(path: Path, keys: list[str], name: str, want_features: bool) -> Any:
    """The source (:mod:`difflens.metrics.sources`) of an ADM or clean-fid file, or None for any other
    layout (read by the usual rules). ADM: statistics when it has them (as the evaluator), else the images
    of ``arr_0``; clean-fid: ``mu``/``sigma`` statistics, or the ``feats`` of a ``_kid.npz`` as features."""
    from difflens.metrics.images import check_image_array
    from difflens.metrics.sources import ArraySource, FeaturesSource, StatsSource

    fmt = detect_format(path, keys)
    if fmt == "clean-fid":
        cf = parse_cleanfid_name(path.name)
        if cf is not None and cf.kid and keys == ["feats"]:
            from difflens.metrics.sources import _check_features

            return FeaturesSource(features=_check_features(npz_array(path, "feats", name), f"{name} {path}"),
                                  path=path)
        if want_features or not {"mu", "sigma"} & set(keys):
            return None
    elif fmt != "adm":
        return None
    if fmt == "adm" and not {"mu", "mu_s", "sigma", "sigma_s"} & set(keys):
        if want_features:
            raise DifflensError(f"{name}: {path} is an ADM sample batch (images in arr_0), not features.",
                                "pass it as --real or --fake (images)")
        images = npz_array(path, ADM_IMAGES, name)
        check_image_array(images, f"{name} ({path}: arr_0)")
        return ArraySource(images=images, path=path)
    if want_features:
        raise DifflensError(f"{name}: {path} is an ADM reference batch (statistics and images), not "
                            "features.",
                            f"pass it as --real (statistics), or its images as {path}:arr_0")
    fs = read_foreign_stats(path, f"{name}:")
    if fs.fid is None:
        return None
    extra = {k: v for k, v in fs.arrays.items() if k in ("mu_s", "sigma_s")}
    return StatsSource(stats=fs.fid, fingerprint=fs.fingerprint, extra=extra, path=path, note=fs.note)


def select_array(spec: str, name: str, want_features: bool) -> Any:
    """``FILE.npz:KEY``: array KEY of an ``.npz`` as images (uint8 N,H,W,3) or features (N, D); None when
    ``spec`` is not of that form (or FILE does not exist)."""
    from difflens.metrics.images import check_image_array
    from difflens.metrics.sources import ArraySource, FeaturesSource, _check_features

    base, sep, key = str(spec).rpartition(":")
    path = Path(base).expanduser()
    if not sep or not key or path.suffix.lower() != ".npz" or not path.is_file():
        return None
    arr = npz_array(path, key, name)
    if arr.ndim == 2 or want_features:
        return FeaturesSource(features=_check_features(arr, f"{name} {spec}"), path=path)
    check_image_array(arr, f"{name} ({spec})")
    return ArraySource(images=arr, path=path)
