"""Inception pool3 features (FID, KID, precision/recall, density/coverage) and unbiased logits (IS) of one
image source, through the one extraction loop (:mod:`difflens.features.extract`: each image decoded once,
a bounded read-ahead, memory flat however large the source). Results are in source order; unreadable files
are skipped and reported (or an error with ``strict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflens.metrics.images import ReadLog

DEFAULT_BATCH_SIZE = 50


@dataclass
class Extracted:
    """Features of one image source."""

    pool3: Any  # (N, 2048) float32
    logits: Any | None  # (N, 1008) float32, or None when not kept
    log: ReadLog = field(default_factory=ReadLog)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(self.pool3.shape[0])


def extract_features(source: Any, extractor: Any, batch_size: int = DEFAULT_BATCH_SIZE,
                     strict: bool = False, label: str = "images", keep_logits: bool = True,
                     show_progress: bool = True, workers: int | None = None) -> Extracted:
    """Run ``extractor`` (an :class:`~difflens.features.inception.Inception`, or the network
    :class:`~difflens.features.inception.InceptionExtractor` it wraps) over ``source``.

    Raises :class:`DifflensError` when fewer than 2 images could be read, or (``strict``) at the first
    unreadable file.
    """
    from difflens.features.extract import extract
    from difflens.features.inception import Inception

    ext = extractor if isinstance(extractor, Inception) else Inception(extractor)
    keep = [(ext.name, "pool3")] + ([(ext.name, "logits")] if keep_logits else [])
    out = extract(source, {ext.name: ext}, batch_size=batch_size, keep=keep, strict=strict, label=label,
                  show_progress=show_progress, description=f"Inception {label}", workers=workers,
                  min_images=2)
    return Extracted(pool3=out.features[(ext.name, "pool3")],
                     logits=out.features[(ext.name, "logits")] if keep_logits else None,
                     log=out.log, seconds=out.seconds)
