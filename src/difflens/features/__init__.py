"""Feature extractors behind one registry, and the one extraction loop that feeds them.

* :mod:`difflens.features.base`: the :class:`Extractor` protocol and the :class:`Fingerprint`;
* :mod:`difflens.features.registry`: ``get_extractor(name, **options)`` and ``register_extractor``;
* :mod:`difflens.features.inception`, ``clip``, ``dinov2``, ``vae``: the built-in adapters;
* :mod:`difflens.features.extract`: one pass over an image source, each image decoded once.

Importing this package loads no torch (the networks load when an extractor is built).
"""

from __future__ import annotations

from difflens.features.base import Extractor, ExtractorBase, Fingerprint

__all__ = [
    "Extractor",
    "ExtractorBase",
    "Fingerprint",
    "extractor_names",
    "get_extractor",
    "register_extractor",
]


def __getattr__(name: str) -> object:
    if name in ("get_extractor", "register_extractor", "extractor_names"):
        from difflens.features import registry

        return getattr(registry, name)
    raise AttributeError(name)
