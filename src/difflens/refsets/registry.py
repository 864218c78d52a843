"""A small registry of published reference statistics: ``--real stats:NAME``.

Each entry names a published Gaussian-statistics file (``mu``, ``sigma`` of Inception pool3 features), where
it is published, the protocol it was computed under and how many images it summarizes. Online,
``stats:NAME`` downloads it into the cache (``$DIFFLENS_CACHE_DIR/refstats``, else
``$XDG_CACHE_HOME/difflens/refstats`` or ``~/.cache/difflens/refstats``) and checks its SHA-256; offline it
is only looked up there, and a missing file is an error that names the path to place it at.

**Digests.** difflens could not download these files when the registry was written, so no entry carries a
SHA-256 that difflens verified: every entry is marked ``verified=False``. For such an entry the first
download is pinned (trust on first use): its SHA-256 is written beside the file (``FILE.sha256``), later
loads are checked against that pin, and every result records the digest and says it is unverified. An
entry whose ``sha256`` is set is checked against it on every load. The URLs are those the publishers' own
tools use (TTUR's README, clean-fid's ``get_reference_statistics``).

**Protocols.** ``tf-legacy``: the TF Inception graph of 2015-12-05 with its own bilinear resize (TTUR's
reference code, clean-fid's ``legacy_tensorflow`` mode), which torch-fidelity's port reproduces;
``clean``: clean-fid's ``clean`` mode (PIL bicubic resize to 299). The statistics are stored as TTUR and
clean-fid store them (``np.cov``, unbiased); the number of images comes from the entry.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.hashing import sha256_file

STATS_PREFIX = "stats:"
CACHE_ENV = "DIFFLENS_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RefStatsEntry:
    """One published statistics file."""

    name: str
    url: str
    protocol: str
    num_images: int
    resolution: int
    dataset: str
    publisher: str
    sha256: str | None = None
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def verified(self) -> bool:
        """True only when difflens ships a SHA-256 it checked for this file."""
        return self.sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "filename": self.filename, "verified": self.verified}


_CLEANFID = "https://www.cs.cmu.edu/~clean-fid/stats"
_C10_TRAIN = "CIFAR-10 train (50,000 images, 32x32)"
_C10_TEST = "CIFAR-10 test (10,000 images, 32x32)"

REGISTRY: dict[str, RefStatsEntry] = {
    e.name: e for e in (
        RefStatsEntry(
            "cifar10-train-ttur", "http://bioinf.jku.at/research/ttur/ttur_stats/fid_stats_cifar10_train.npz",
            protocol="tf-legacy", num_images=50000, resolution=32, dataset=_C10_TRAIN,
            publisher="TTUR (Heusel et al. 2017, bioinf-jku)",
            notes="computed by TTUR's TensorFlow reference code; served over plain http"),
        RefStatsEntry(
            "cifar10-train-32-tf", f"{_CLEANFID}/cifar10_legacy_tensorflow_train_32.npz",
            protocol="tf-legacy", num_images=50000, resolution=32, dataset=_C10_TRAIN,
            publisher="clean-fid (Parmar et al. 2022), mode legacy_tensorflow"),
        RefStatsEntry(
            "cifar10-test-32-tf", f"{_CLEANFID}/cifar10_legacy_tensorflow_test_32.npz",
            protocol="tf-legacy", num_images=10000, resolution=32, dataset=_C10_TEST,
            publisher="clean-fid (Parmar et al. 2022), mode legacy_tensorflow"),
        RefStatsEntry(
            "cifar10-train-32-clean", f"{_CLEANFID}/cifar10_clean_train_32.npz",
            protocol="clean", num_images=50000, resolution=32, dataset=_C10_TRAIN,
            publisher="clean-fid (Parmar et al. 2022), mode clean"),
        RefStatsEntry(
            "cifar10-test-32-clean", f"{_CLEANFID}/cifar10_clean_test_32.npz",
            protocol="clean", num_images=10000, resolution=32, dataset=_C10_TEST,
            publisher="clean-fid (Parmar et al. 2022), mode clean"),
    )
}


def is_stats_spec(spec: Any) -> bool:
    """True for ``stats:NAME``."""
    return isinstance(spec, str) and spec.startswith(STATS_PREFIX)


def cache_dir() -> Path:
    """Where registry statistics are kept."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "refstats"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "difflens" / "refstats"


def get_entry(spec_or_name: str, registry: dict[str, RefStatsEntry] | None = None) -> RefStatsEntry:
    reg = REGISTRY if registry is None else registry
    name = spec_or_name[len(STATS_PREFIX):] if is_stats_spec(spec_or_name) else spec_or_name
    if name not in reg:
        raise DifflensError(f"no reference statistics named {name!r}; known: {', '.join(sorted(reg))}.",
                            "run `difflens stats list` for the registry, or pass a statistics .npz file")
    return reg[name]


@dataclass
class ResolvedStats:
    """A registry file found (or fetched) and checked."""

    entry: RefStatsEntry
    path: Path
    sha256: str
    verified: bool
    downloaded: bool
    warnings: list[str] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        return {"kind": "registry", "name": self.entry.name, "url": self.entry.url, "path": str(self.path),
                "sha256": self.sha256, "sha256_verified": self.verified,
                "pinned_on_first_use": not self.verified,
                "protocol": self.entry.protocol, "num_images": self.entry.num_images,
                "dataset": self.entry.dataset, "publisher": self.entry.publisher}


def _pin_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_npz(path: Path, what: str) -> None:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
            if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
                raise ValueError(f"mu {mu.shape}, sigma {sigma.shape}")
    except (OSError, ValueError, KeyError) as exc:
        raise DifflensError(f"{what} is not a statistics file with mu (D,) and sigma (D, D): {exc}.",
                            f"delete {path} and fetch it again") from None


def _download(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` to ``dest`` atomically; returns the SHA-256 of the bytes."""
    import urllib.error
    import urllib.request

    from difflens.atomic import atomic_path

    h = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp, \
                open(tmp, "wb") as f:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                h.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DifflensError(f"could not download {url}: {exc}.",
                            f"download it by hand and place it at {dest}, or run with --offline") from None
    return h.hexdigest()


def resolve_registry_stats(spec: str, offline: bool = False, registry: dict[str, RefStatsEntry] | None = None,
                           root: Path | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> ResolvedStats:
    """Find ``stats:NAME`` in the cache, or (online) download it; check its digest (see module docstring)."""
    from difflens.atomic import write_text
    from difflens.models import is_offline

    entry = get_entry(spec, registry)
    path = (root if root is not None else cache_dir()) / entry.filename
    pin = _pin_path(path)
    downloaded = False
    if not path.is_file():
        if is_offline(offline):
            raise DifflensError(
                f"reference statistics {entry.name!r} are not in the cache and --offline forbids downloading "
                f"them: place the file {entry.filename} at {path}.",
                f"download {entry.url} on a machine with internet access and copy it there "
                f"(or set {CACHE_ENV} to the cache that holds it)")
        digest = _download(entry.url, path, timeout)
        downloaded = True
        if entry.sha256 is not None and digest != entry.sha256:
            path.unlink(missing_ok=True)
            raise DifflensError(f"{entry.url} has SHA-256 {digest}, not the registered {entry.sha256}; "
                                "the file was deleted.",
                                "the published file changed or the download is corrupt: report it, or pass a "
                                "statistics file you trust")
    else:
        digest = sha256_file(path)
    _check_npz(path, f"{path} (stats:{entry.name})")
    warnings: list[str] = []
    if entry.sha256 is not None:
        if digest != entry.sha256:
            raise DifflensError(f"{path} has SHA-256 {digest}, not the registered {entry.sha256} of "
                                f"stats:{entry.name}.", f"delete {path} and fetch it again")
        verified = True
    else:
        verified = False
        if pin.is_file():
            pinned = (pin.read_text(encoding="utf-8").split() or [""])[0]
            if pinned != digest:
                raise DifflensError(f"{path} has SHA-256 {digest}, but {pin} pinned {pinned} when it was "
                                    "first fetched: the file changed.",
                                    f"delete {path} and {pin} and fetch it again")
        else:
            write_text(pin, f"{digest}  {entry.filename}\n")
        warnings.append(f"stats:{entry.name}: SHA-256 {digest} is not verified by difflens (pinned on first "
                        f"use in {pin}); compare it with a digest you trust")
    return ResolvedStats(entry, path, digest, verified, downloaded, warnings)


def registry_fingerprint(entry: RefStatsEntry, weights_sha256: str | None = None) -> dict[str, Any]:
    """The protocol fingerprint of a registry file, in the metrics' fingerprint format: its protocol with the
    standard TF Inception weights (the weights both TTUR and clean-fid use)."""
    from difflens.metrics.fingerprint import Fingerprint

    if weights_sha256 is None:
        weights_sha256 = _standard_weights_sha256()
    return Fingerprint(protocol=entry.protocol, weights_sha256=weights_sha256).to_dict()


def _standard_weights_sha256() -> str:
    """SHA-256 of the published TF Inception (2015-12-05) weights file, as difflens pins it."""
    from difflens.metrics.inception import KNOWN_SHA256

    return KNOWN_SHA256


def load_registry_stats(spec: str, offline: bool = False, root: Path | None = None,
                        registry: dict[str, RefStatsEntry] | None = None) -> tuple[Any, dict[str, Any],
                                                                                 dict[str, Any]]:
    """``stats:NAME`` as ``(GaussianStats, fingerprint, extra)``, like ``difflens.metrics.stats.load_stats``;
    ``extra`` holds ``dataset`` (the registry identity) and ``warnings``."""
    import numpy as np

    from difflens.metrics.stats import stats_from_mu_sigma

    resolved = resolve_registry_stats(spec, offline=offline, registry=registry, root=root)
    with np.load(resolved.path, allow_pickle=False) as data:
        mu = np.asarray(data["mu"], dtype=np.float64)
        sigma = np.asarray(data["sigma"], dtype=np.float64)
    stats = stats_from_mu_sigma(mu, sigma, resolved.entry.num_images)
    extra = {"dataset": resolved.identity(), "warnings": list(resolved.warnings)}
    return stats, registry_fingerprint(resolved.entry), extra
