"""The FID-standard Inception's weights (TF 2015-12-05 graph): lookup, verification, random-init weights.

The network (:mod:`difflens.features.inception`) loads the file found here.

**Weights lookup order** (first hit wins):

1. ``--inception-weights FILE`` (``weights=`` in the API): any file in torch-fidelity's state-dict format;
   a file that is not the published one gives a warning, since its numbers are not comparable to
   published FIDs;
2. ``$DIFFLENS_WEIGHTS_DIR/weights-inception-2015-12-05-6726825d.pth`` (or the pytorch-fid name
   ``pt_inception-2015-12-05-6726825d.pth``);
3. the torch hub cache, ``torch.hub.get_dir()/checkpoints/`` under either name (where torch-fidelity and
   pytorch-fid save their downloads);
4. a download from torch-fidelity's release URL into the torch hub cache, unless offline (``--offline``,
   ``HF_HUB_OFFLINE=1`` or ``DIFFLENS_OFFLINE=1``).

Files found under the standard names (2-4) must have the published SHA-256 (:data:`KNOWN_SHA256`; both
projects publish byte-identical files, and the hex in the file name is the digest's prefix, torch hub's
convention); a mismatch is an error. The digest of the file used always goes into the fingerprint.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.hashing import sha256_file

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity
PT_FID_FILENAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid
STANDARD_FILENAMES = (WEIGHTS_FILENAME, PT_FID_FILENAME)
WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")
#: SHA-256 of the published file (95,628,359 bytes); torch-fidelity's and pytorch-fid's releases are the
#: same bytes, and the file names carry the digest's first 8 hex digits.
KNOWN_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_DIR_ENV = "DIFFLENS_WEIGHTS_DIR"
INPUT_SIZE = 299
FEATURES = ("2048", "logits_unbiased")
RANDOM_SIDECAR_SUFFIX = ".difflens.json"


@dataclass(frozen=True)
class InceptionWeights:
    """A resolved weights file."""

    path: Path
    sha256: str
    source: str
    random_init: bool = False

    @property
    def standard(self) -> bool:
        """True when the file is the published TF 2015-12-05 Inception."""
        return self.sha256 == KNOWN_SHA256

    def warning(self) -> str | None:
        """The warning to show prominently when the weights are not the published file."""
        if self.random_init:
            return (f"RANDOM-INIT Inception weights ({self.path}): every value below is NOT comparable to "
                    "published FID/KID/IS numbers (use the real TF-2015-12-05 weights for real "
                    f"evaluations: {WEIGHTS_FILENAME})")
        if not self.standard:
            return (f"Inception weights {self.path} are not the published TF-2015-12-05 file (SHA-256 "
                    f"{self.sha256[:16]}... != {KNOWN_SHA256[:16]}...): values are not comparable to "
                    "published numbers")
        return None


def _is_random_init(path: Path, digest: str) -> bool:
    side = path.with_name(path.name + RANDOM_SIDECAR_SUFFIX)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(meta.get("random_init")) and meta.get("sha256") == digest


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (where torch-fidelity and pytorch-fid cache their downloads)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _candidates() -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        out += [(Path(env).expanduser() / name, f"${WEIGHTS_DIR_ENV}") for name in STANDARD_FILENAMES]
    hub = hub_checkpoint_dir()
    out += [(hub / name, "torch hub cache") for name in STANDARD_FILENAMES]
    return out


def _verified(path: Path, source: str) -> InceptionWeights:
    digest = sha256_file(path)
    if digest != KNOWN_SHA256:
        raise DifflensError(
            f"Inception weights {path} ({source}) have SHA-256 {digest[:16]}..., not the published "
            f"{KNOWN_SHA256[:16]}...: the file is corrupt, truncated or a different network.",
            f"delete it (it is fetched again when online) or put the published {WEIGHTS_FILENAME} there; to "
            "use this file anyway pass it with --inception-weights")
    return InceptionWeights(path=path, sha256=digest, source=source)


def resolve_inception_weights(weights: str | Path | None = None, offline: bool = False) -> InceptionWeights:
    """Find the Inception weights file (see the module docstring for the order); download if allowed.

    Raises :class:`DifflensError` when no file can be found or fetched, naming the file and where to put it.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DifflensError(f"--inception-weights {path} does not exist.",
                                f"pass the path of {WEIGHTS_FILENAME} (or another torch-fidelity Inception "
                                "state dict)")
        digest = sha256_file(path)
        return InceptionWeights(path=path, sha256=digest, source="--inception-weights",
                                random_init=_is_random_init(path, digest))
    candidates = _candidates()
    for path, source in candidates:
        if path.is_file():
            return _verified(path, source)
    from difflens.models import is_offline

    hub = hub_checkpoint_dir()
    where = (f"${WEIGHTS_DIR_ENV} ({os.environ[WEIGHTS_DIR_ENV]})" if os.environ.get(WEIGHTS_DIR_ENV)
             else f"{hub} (or a folder named by ${WEIGHTS_DIR_ENV})")
    if is_offline(offline):
        raise DifflensError(
            f"Inception weights not found offline (looked for {WEIGHTS_FILENAME} / {PT_FID_FILENAME} in "
            f"{', '.join(sorted({str(p.parent) for p, _ in candidates}))}).",
            f"put {WEIGHTS_FILENAME} (SHA-256 {KNOWN_SHA256}, from {WEIGHTS_URL}) in {where}, pass "
            "--inception-weights FILE, or run once without --offline/HF_HUB_OFFLINE to download it")
    return _download(hub / WEIGHTS_FILENAME)


def _download(dest: Path) -> InceptionWeights:
    import torch.hub

    from difflens.console import console

    dest.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"downloading Inception weights to {dest}")
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(dest), hash_prefix=None, progress=console.is_terminal)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError, ssl)
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise DifflensError(f"could not download the Inception weights from {WEIGHTS_URL}: {exc}.",
                            f"download {WEIGHTS_FILENAME} by hand and put it in {dest.parent}, or pass "
                            "--inception-weights FILE") from None
    try:
        return _verified(dest, "download")
    except DifflensError:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


def _describe_weights(path: Path) -> str:
    """What a file that torch's safe loader refused is (never torch's own advice, which suggests
    disabling the safe loader)."""
    from difflens.metrics.validate import describe_file, describe_zip

    kind = describe_file(path)
    if kind == "a zip archive":
        kind = describe_zip(path)
        if kind == "a torch checkpoint":
            return ("a torch checkpoint holding Python objects beyond tensors (refused: unpickling them "
                    "could run arbitrary code)")
        return kind
    if kind == "a Python pickle":
        return "a legacy pickle that the safe loader refuses (it holds Python objects beyond tensors)"
    return kind


class _Skeleton:
    """Builds torch-fidelity's module without loading weights (its constructor always loads some)."""

    @staticmethod
    def build() -> Any:
        import tempfile

        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        class _Unloaded(FeatureExtractorInceptionV3):
            def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
                return None

        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "empty.pth"
            torch.save({}, empty)
            return _Unloaded("inception-v3-compat", list(FEATURES), feature_extractor_weights_path=str(empty))


def random_inception_state_dict(seed: int = 0) -> dict[str, Any]:
    """A random-init state dict with exactly the keys, shapes and dtypes of torch-fidelity's Inception.

    Values come from numpy's seeded generator (stable across torch versions): convolutions He-normal,
    batch-norm scales and running variances near 1, small biases and running means, and a final layer
    scaled so that logits spread over a few units (IS is then neither 1 nor 1008).
    """
    import numpy as np
    import torch

    module = _Skeleton.build()
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for key, ref in module.state_dict().items():
        shape = tuple(ref.shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(ref)
            continue
        if key == "fc.weight":
            arr = rng.standard_normal(shape) * (4.0 / np.sqrt(shape[1]))
        elif key == "fc.bias":
            arr = rng.standard_normal(shape) * 0.1
        elif key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight") or key.endswith("bn.running_var"):
            arr = rng.uniform(0.9, 1.1, shape)
        elif key.endswith("bn.bias") or key.endswith("bn.running_mean"):
            arr = rng.standard_normal(shape) * 0.05
        else:  # pragma: no cover - a key torch-fidelity adds in a later version
            raise RuntimeError(f"unexpected Inception state-dict key {key}")
        out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(ref.dtype)
    return out


def make_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save random-init Inception weights in torch-fidelity's format (``torch.save`` of the state dict).

    For tests and the offline demo only: numbers computed with them are not comparable to published FIDs.
    A sidecar ``<name>.difflens.json`` marks the file as random so every output says so.
    """
    import torch

    from difflens.atomic import atomic_path, write_text

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(random_inception_state_dict(seed), tmp)
    meta = {"random_init": True, "seed": seed, "sha256": sha256_file(path),
            "format": "torch-fidelity FeatureExtractorInceptionV3 state dict"}
    write_text(path.with_name(path.name + RANDOM_SIDECAR_SUFFIX), json.dumps(meta, indent=2) + "\n")
    return path
