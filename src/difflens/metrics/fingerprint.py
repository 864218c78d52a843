"""Moved to :mod:`difflens.features.base` (one Fingerprint for every extractor); kept as an alias so
existing imports keep working."""

from __future__ import annotations

from difflens.features.base import (
    COMPARED,
    DTYPE,
    EXTRACTOR_NAME,
    FEATURE_LAYER,
    OPTIONAL_COMPARED,
    PROTOCOL_TEXT,
    PROTOCOLS,
    REQUIRED,
    Fingerprint,
    check_compatible,
    mismatches,
)

__all__ = ["COMPARED", "DTYPE", "EXTRACTOR_NAME", "FEATURE_LAYER", "OPTIONAL_COMPARED", "PROTOCOLS",
           "PROTOCOL_TEXT", "REQUIRED", "Fingerprint", "check_compatible", "mismatches"]
