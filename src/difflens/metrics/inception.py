"""The FID Inception now lives in :mod:`difflens.features.inception` (network, resize protocols,
extractor) and :mod:`difflens.features.inception_weights` (weights lookup, random-init weights); this
module keeps the old import path working."""

from __future__ import annotations

from difflens.features.base import PROTOCOLS, Fingerprint
from difflens.features.inception import (
    FEATURES,
    INPUT_SIZE,
    Inception,
    InceptionExtractor,
    clean_resize,
    forward_normalized,
    load_inception,
    same_size_runs,
    tf_resize,
)
from difflens.features.inception_weights import (
    KNOWN_SHA256,
    PT_FID_FILENAME,
    RANDOM_SIDECAR_SUFFIX,
    STANDARD_FILENAMES,
    WEIGHTS_DIR_ENV,
    WEIGHTS_FILENAME,
    WEIGHTS_URL,
    InceptionWeights,
    _Skeleton,
    hub_checkpoint_dir,
    make_random_inception_weights,
    random_inception_state_dict,
    resolve_inception_weights,
)
from difflens.numerics import strict_float32

__all__ = ["FEATURES", "INPUT_SIZE", "KNOWN_SHA256", "PROTOCOLS", "PT_FID_FILENAME", "RANDOM_SIDECAR_SUFFIX",
           "STANDARD_FILENAMES", "WEIGHTS_DIR_ENV", "WEIGHTS_FILENAME", "WEIGHTS_URL", "Fingerprint",
           "Inception", "InceptionExtractor", "InceptionWeights", "_Skeleton", "clean_resize",
           "forward_normalized", "hub_checkpoint_dir", "load_inception", "make_random_inception_weights",
           "random_inception_state_dict", "resolve_inception_weights", "same_size_runs", "strict_float32",
           "tf_resize"]
