"""What a feature extractor is, and the fingerprint that says what its numbers were computed with.

An :class:`Extractor` maps a batch of decoded uint8 RGB images to one float32 array per *layer* it provides
(Inception: ``pool3`` and ``logits``; CLIP: ``image_embeds``; DINOv2: ``cls``; the model's VAE: ``mid``).
Its per-image CPU work (a resize that runs image by image) may be split out as :meth:`prepare`, which the
extraction loop (:mod:`difflens.features.extract`) runs in its reader threads, and the batched network
pass as :meth:`forward`; ``extractor(images) == extractor.forward([extractor.prepare(im) for im in images])``.

A :class:`Fingerprint` records everything that changes the numbers of one layer: the protocol (input
resize/normalization), the network, the SHA-256 of its weights, the layer, the dtype, and, when a dataset
reader resized the images first, ``reference_preprocess`` (``--reference-size``). Two fingerprints
describe comparable features when every compared field agrees (``difflens_version`` is provenance only;
the optional fields are compared when both sides record them). Its dict form is what statistics files and
the metrics JSON store: for Inception exactly the dict difflens has always written. This module imports
no torch, so FID from two statistics files stays light.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from difflens.errors import DifflensError

#: The Inception resize protocols (see :mod:`difflens.features.inception`).
PROTOCOLS: tuple[str, ...] = ("tf-legacy", "clean")
EXTRACTOR_NAME = "torch-fidelity FeatureExtractorInceptionV3 (TF Inception 2015-12-05 graph)"
FEATURE_LAYER = "pool3 (2048)"
DTYPE = "float32"

#: Fields every fingerprint has, compared when deciding whether two describe the same protocol.
REQUIRED = ("protocol", "extractor", "weights_sha256", "feature_layer", "dtype")
#: Fields compared when both fingerprints record them (``reference_preprocess`` is set by dataset readers,
#: ``preprocessing`` by extractors whose input transform is not named by ``protocol`` alone).
OPTIONAL_COMPARED = ("reference_preprocess", "preprocessing")
COMPARED = (*REQUIRED, *OPTIONAL_COMPARED)

PROTOCOL_TEXT = {
    "tf-legacy": "TF1-exact bilinear resize of uint8 pixels to 299x299 inside the network, (x-128)/128 "
                 "(torch-fidelity, TTUR, pytorch-fid default)",
    "clean": "PIL bicubic antialiased resize of each channel as float to 299x299, clipped to [0, 255], "
             "(x-128)/128 (clean-fid 'clean' mode)",
}


@dataclass(frozen=True)
class Fingerprint:
    """What features were computed with (for Inception: the FID protocol of every difflens output)."""

    protocol: str
    weights_sha256: str
    extractor: str = EXTRACTOR_NAME
    feature_layer: str = FEATURE_LAYER
    dtype: str = DTYPE
    difflens_version: str = ""
    #: the dataset reader's resize/crop (``--reference-size``), None for images as stored; recorded (and
    #: compared) only when ``reference_recorded`` (images extracted directly do not record it)
    reference_preprocess: dict[str, Any] | None = None
    reference_recorded: bool = False
    #: canonical JSON of the extractor's preprocessing when ``protocol`` does not name it ("" = none)
    preprocessing: str = ""

    def __post_init__(self) -> None:
        if self.extractor == EXTRACTOR_NAME and self.protocol not in PROTOCOLS:
            raise DifflensError(f"unknown resize protocol {self.protocol!r}.",
                                f"use one of {', '.join(PROTOCOLS)}")
        if not self.protocol:
            raise DifflensError("a fingerprint needs a protocol.", "name the extractor's input preprocessing")
        if not self.difflens_version:
            from difflens import __version__

            object.__setattr__(self, "difflens_version", __version__)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the required fields and ``difflens_version``, plus each optional field that is
        set (an Inception fingerprint without them gives exactly the dict difflens has always stored)."""
        out: dict[str, Any] = {"protocol": self.protocol, "weights_sha256": self.weights_sha256,
                               "extractor": self.extractor, "feature_layer": self.feature_layer,
                               "dtype": self.dtype, "difflens_version": self.difflens_version}
        if self.reference_recorded or self.reference_preprocess is not None:
            out["reference_preprocess"] = self.reference_preprocess
        if self.preprocessing:
            out["preprocessing"] = self.preprocessing
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Rebuild from a stored dict; raises DifflensError when a compared field is missing."""
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise DifflensError(f"stored fingerprint lacks {', '.join(missing)}.",
                                "recompute the statistics with difflens metrics --save-stats")
        kwargs: dict[str, Any] = {k: str(data[k]) for k in (*REQUIRED, "difflens_version") if k in data}
        if "reference_preprocess" in data:
            ref = data["reference_preprocess"]
            kwargs["reference_preprocess"] = dict(ref) if isinstance(ref, dict) else None
            kwargs["reference_recorded"] = True
        if data.get("preprocessing"):
            kwargs["preprocessing"] = str(data["preprocessing"])
        return cls(**kwargs)

    def with_reference(self, reference_preprocess: dict[str, Any] | None) -> Fingerprint:
        """The same fingerprint for images a dataset reader resized first (``reference_preprocess``)."""
        from dataclasses import replace

        return replace(self, reference_preprocess=reference_preprocess, reference_recorded=True)

    def mismatches(self, other: Fingerprint | dict[str, Any]) -> list[str]:
        """Compared fields where the two differ (see :func:`mismatches`)."""
        b = other.to_dict() if isinstance(other, Fingerprint) else other
        return mismatches(self.to_dict(), b)

    def key(self) -> str:
        """SHA-256 of the compared fields (canonical JSON): a cache key part that changes with the numbers."""
        d = self.to_dict()
        blob = json.dumps({k: d.get(k) for k in COMPARED}, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def canonical_preprocessing(spec: dict[str, Any]) -> str:
    """An extractor's ``preprocessing()`` dict as canonical JSON (the fingerprint's ``preprocessing``)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


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


@runtime_checkable
class Extractor(Protocol):
    """A feature extractor: uint8 RGB images in, one float32 ``(N, D)`` array per layer out."""

    name: str  #: registry name, e.g. ``"inception"``, ``"clip:openai/clip-vit-base-patch32"``
    layers: tuple[str, ...]  #: the layers :meth:`__call__` returns, e.g. ``("pool3", "logits")``
    device: str

    def preprocessing(self) -> dict[str, Any]:
        """The input transform (resize, crop, normalization), recorded in the protocol."""
        ...

    def fingerprint(self, layer: str) -> Fingerprint:
        """What ``layer``'s numbers depend on."""
        ...

    def __call__(self, images: Any) -> dict[str, Any]:
        """uint8 ``(N, H, W, 3)`` array (or a list of ``(H, W, 3)`` arrays) -> ``{layer: (N, D) float32}``."""
        ...


class ExtractorBase:
    """Shared plumbing: ``__call__`` is :meth:`forward` over :meth:`prepare`; subclasses set ``name``,
    ``layers``, ``device`` and implement :meth:`forward`, :meth:`preprocessing` and :meth:`fingerprint`.

    :meth:`prepare` is the per-image CPU step the extraction loop runs in its reader threads (a resize);
    the default keeps the decoded uint8 image.
    """

    name: str = ""
    layers: tuple[str, ...] = ()
    device: str = "cpu"
    #: False when :meth:`prepare` is the identity (the loop then skips its reader threads for arrays)
    needs_prepare: bool = False

    def prepare(self, image: Any) -> Any:
        """Per-image work done in loader threads; the default keeps the uint8 (H, W, 3) image."""
        return image

    def forward(self, prepared: Sequence[Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self, layer: str) -> Fingerprint:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_layer(self, layer: str) -> None:
        """DifflensError when ``layer`` is not one this extractor provides."""
        if layer not in self.layers:
            raise DifflensError(f"extractor {self.name!r} has no layer {layer!r}.",
                                f"use one of {', '.join(self.layers)}")

    def __call__(self, images: Any, **kwargs: Any) -> dict[str, Any]:
        """``forward(prepare(each image))``; a ``prompted`` extractor also takes ``prompts=[...]``."""
        return self.forward([self.prepare(im) for im in as_image_list(images)], **kwargs)


def as_image_list(images: Any) -> list[Any]:
    """A uint8 ``(N, H, W, 3)`` array or a sequence of ``(H, W, 3)`` uint8 arrays as a list of arrays;
    DifflensError for anything else (float pixels, channels first, grey)."""
    import numpy as np

    items = list(images) if not isinstance(images, np.ndarray) else [images[i] for i in range(len(images))]
    for im in items:
        arr = np.asarray(im)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise DifflensError(f"an extractor takes uint8 (H, W, 3) RGB images, got {arr.dtype} "
                                f"{tuple(arr.shape)}.",
                                "convert to uint8 RGB, channels last (e.g. (x * 255).round().astype(uint8))")
    return [np.asarray(im) for im in items]
