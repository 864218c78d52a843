"""Protocol fingerprint: everything that changes Inception features, recorded in every output.

Two sets of statistics or features are comparable only when their fingerprints agree on every field except
``difflens_version`` (recorded for provenance, not compared). ``reference_preprocess`` (the
``--reference-size`` resize and crop of a dataset, ``None`` for images as stored) is compared whenever both
sides record it: statistics built at 256 and at 512 are different protocols. Images extracted directly
(a folder of generated samples) do not record it, so they compare with statistics of any reference size.
This module imports no torch, so FID from two statistics files stays light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from difflens.errors import DifflensError

PROTOCOLS: tuple[str, ...] = ("tf-legacy", "clean")
EXTRACTOR_NAME = "torch-fidelity FeatureExtractorInceptionV3 (TF Inception 2015-12-05 graph)"
FEATURE_LAYER = "pool3 (2048)"
DTYPE = "float32"

#: Fields every fingerprint has, compared when deciding whether two describe the same protocol.
REQUIRED = ("protocol", "extractor", "weights_sha256", "feature_layer", "dtype")
#: Fields compared when both fingerprints record them (set by dataset readers).
OPTIONAL_COMPARED = ("reference_preprocess",)
COMPARED = (*REQUIRED, *OPTIONAL_COMPARED)

PROTOCOL_TEXT = {
    "tf-legacy": "TF1-exact bilinear resize of uint8 pixels to 299x299 inside the network, (x-128)/128 "
                 "(torch-fidelity, TTUR, pytorch-fid default)",
    "clean": "PIL bicubic antialiased resize of each channel as float to 299x299, clipped to [0, 255], "
             "(x-128)/128 (clean-fid 'clean' mode)",
}


@dataclass(frozen=True)
class Fingerprint:
    """What Inception features were computed with."""

    protocol: str
    weights_sha256: str
    extractor: str = EXTRACTOR_NAME
    feature_layer: str = FEATURE_LAYER
    dtype: str = DTYPE
    difflens_version: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DifflensError(f"unknown resize protocol {self.protocol!r}.",
                                f"use one of {', '.join(PROTOCOLS)}")
        if not self.difflens_version:
            from difflens import __version__

            object.__setattr__(self, "difflens_version", __version__)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Rebuild from a stored dict; raises DifflensError when a compared field is missing."""
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise DifflensError(f"stored fingerprint lacks {', '.join(missing)}.",
                                "recompute the statistics with difflens metrics --save-stats")
        return cls(**{k: str(data[k]) for k in (*REQUIRED, "difflens_version") if k in data})


def _short(value: Any) -> str:
    """``reference_preprocess`` dicts shown by their size (``size 256``), everything else as repr."""
    if isinstance(value, dict) and "size" in value:
        return f"size {value['size']}"
    if value is None:
        return "None (as stored)"
    return repr(value)


def mismatches(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Compared fields where two fingerprint dicts differ, as ``'field: a != b'`` lines
    (:data:`OPTIONAL_COMPARED` fields only when both dicts have them)."""
    out = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in REQUIRED if a.get(k) != b.get(k)]
    out += [f"{k}: {_short(a[k])} != {_short(b[k])}" for k in OPTIONAL_COMPARED
            if k in a and k in b and a[k] != b[k]]
    return out


def check_compatible(a: dict[str, Any] | None, b: dict[str, Any] | None, what_a: str, what_b: str,
                     allow_mismatch: bool, warnings: list[str]) -> None:
    """Refuse (DifflensError) to compare inputs made under different protocols unless ``allow_mismatch``,
    in which case a warning is recorded. A missing fingerprint (e.g. a pytorch-fid statistics file) gives a
    warning only."""
    if a is None or b is None:
        return
    diff = mismatches(a, b)
    if not diff:
        return
    text = "; ".join(diff)
    if allow_mismatch:
        warnings.append(f"{what_a} and {what_b} were made under different protocols ({text}); compared "
                        "anyway because of --allow-protocol-mismatch: the values are not meaningful")
        return
    raise DifflensError(f"{what_a} and {what_b} were made under different protocols ({text}).",
                        "recompute one of them with the same --protocol, --inception-weights and "
                        "--reference-size, or pass --allow-protocol-mismatch to compare them anyway")
