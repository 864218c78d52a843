"""One extraction pass over an image set for several cached extractors (CLIP score, CMMD, FD-DINOv2).

:func:`prefetch` looks each extractor's features up in the feature cache
(:mod:`difflens.metrics.feature_cache`, keyed by everything that changes the numbers) and runs the
extractors that missed in ONE pass of the extraction loop, so each image is decoded once for all of them;
the features are then served from memory by :class:`PrefetchedCache` to the metric code that asks the
cache for them, and written to the parent cache as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from difflens.metrics.feature_cache import FeatureCache, FeatureKey


class PrefetchedCache(FeatureCache):
    """Features of the current run held in memory, in front of a parent cache (which may be ``NoCache``)."""

    def __init__(self, parent: FeatureCache) -> None:
        self.parent = parent
        self.root = parent.root
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Any] = {}

    def load(self, key: FeatureKey) -> Any | None:
        found = self._memory.get(key.canonical())
        if found is not None:
            return found
        found = self.parent.load(key)
        if found is not None:
            self._memory[key.canonical()] = found
        return found

    def save(self, key: FeatureKey, features: Any) -> Any:
        self._memory[key.canonical()] = features
        return self.parent.save(key, features)

    def get_or_compute(self, key: FeatureKey, compute: Callable[[], Any]) -> Any:
        found = self._memory.get(key.canonical())
        if found is not None:
            return found
        feats = self.parent.get_or_compute(key, compute)
        self._memory[key.canonical()] = feats
        return feats

    def store(self, key: FeatureKey, features: Any) -> None:
        """Keep ``features`` for this run and write them to the parent cache (a failed write warns, as the
        parent's own ``get_or_compute`` does)."""
        self._memory[key.canonical()] = features
        try:
            self.parent.save(key, features)
        except OSError as exc:
            from difflens.console import console

            console.print(f"[yellow]warning:[/] feature cache not written ({exc.strerror or exc})")


def prefetch(images: Sequence[Any], digest: str, extractors: Sequence[Any], cache: PrefetchedCache,
             batch_size: int, label: str = "images", show_progress: bool = True) -> None:
    """Fill ``cache`` with every extractor's features of ``images`` (an extractor with a ``cache_key``
    method and one layer), computing those not cached in one pass of the loop."""
    from difflens.features.extract import extract

    unique = {e.name: e for e in extractors}
    missing = {name: e for name, e in unique.items()
               if cache.load(e.cache_key(digest, len(images))) is None}
    if not missing or len(images) == 0:
        return
    out = extract(list(images), missing, batch_size=batch_size, strict=True, label=label,
                  show_progress=show_progress, description=f"{' + '.join(missing)} {label}")
    for name, e in missing.items():
        cache.store(e.cache_key(digest, len(images)), out.features[(name, e.layers[0])])
