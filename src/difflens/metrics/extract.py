"""One batched Inception pass over an image source: pool3 features (FID, KID, precision/recall,
density/coverage) and unbiased logits (IS) together, with a progress bar.

Images are decoded (and, for the ``clean`` protocol, resized) in a few reader threads that stay a bounded
window ahead of the network, so decoding overlaps the forward pass and memory stays flat however large
the folder. Results are in file order; unreadable files are skipped and reported (or an error with
``strict``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.images import ImageReadError, ReadLog, read_image
from difflens.metrics.sources import ArraySource, FolderSource

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


class _Batch:
    """Prepared images plus the number of source items consumed (read or skipped): len() counts the
    latter, so the progress bar reaches its total even when files are skipped."""

    def __init__(self) -> None:
        self.images: list[Any] = []
        self.consumed = 0

    def __len__(self) -> int:  # used by difflens.console.progress to advance the bar
        return self.consumed


def _read_prepared(item: Any, extractor: Any) -> tuple[Any | None, str | None]:
    try:
        img = read_image(item) if not hasattr(item, "shape") else item
        return extractor.prepare(img), None
    except ImageReadError as exc:
        return None, str(exc)


def _prepared(source: FolderSource | ArraySource, extractor: Any, workers: int, window: int
              ) -> Iterator[tuple[Any, Any | None, str | None]]:
    """(item, prepared image or None, error or None) in source order, read ahead by ``window`` items."""
    import numpy as np

    if isinstance(source, ArraySource):
        items: Iterator[Any] = (np.asarray(source.images[i]) for i in range(source.n))
        if extractor.protocol != "clean":  # nothing to do per image: no threads needed
            for img in items:
                yield "array", img, None
            return
    else:
        items = iter(source.files)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="difflens-read") as pool:
        pending: deque[tuple[Any, Future[tuple[Any | None, str | None]]]] = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(_read_prepared, item, extractor)))
                if len(pending) >= window:
                    head, fut = pending.popleft()
                    yield (head, *fut.result())
            while pending:
                head, fut = pending.popleft()
                yield (head, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()


def _batches(source: FolderSource | ArraySource, extractor: Any, batch_size: int, strict: bool, label: str,
             log: ReadLog, workers: int) -> Iterator[_Batch]:
    batch = _Batch()
    for item, img, err in _prepared(source, extractor, workers, window=max(2 * batch_size, 8)):
        batch.consumed += 1
        if err is not None:
            if strict:
                raise DifflensError(f"{label}: cannot read image {item}: {err}.",
                                    "remove or replace the file, or drop --strict to skip unreadable images "
                                    "with a warning")
            log.skipped.append((str(item), err))
        else:
            batch.images.append(img)
        if len(batch.images) >= batch_size:
            yield batch
            batch = _Batch()
    if batch.consumed:
        yield batch


def extract_features(source: FolderSource | ArraySource, extractor: Any, batch_size: int = DEFAULT_BATCH_SIZE,
                     strict: bool = False, label: str = "images", keep_logits: bool = True,
                     show_progress: bool = True, workers: int | None = None) -> Extracted:
    """Run ``extractor`` (an :class:`~difflens.metrics.inception.InceptionExtractor`) over ``source``.

    Raises :class:`DifflensError` when fewer than 2 images could be read, or (``strict``) at the first
    unreadable file.
    """
    import time

    import numpy as np

    from difflens.console import progress

    if batch_size < 1:
        raise DifflensError(f"--batch-size must be at least 1, got {batch_size}.", "use e.g. --batch-size 50")
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    log = ReadLog()
    pools: list[Any] = []
    logits: list[Any] = []
    t0 = time.perf_counter()
    batches = _batches(source, extractor, batch_size, strict, label, log, workers)
    if show_progress:
        batches = progress(batches, total=source.n, description=f"Inception {label}", unit="img")
    for batch in batches:
        if not batch.images:
            continue
        f, lg = extractor(batch.images)
        pools.append(f)
        if keep_logits:
            logits.append(lg)
    seconds = time.perf_counter() - t0
    n = sum(len(p) for p in pools)
    if n < 2:
        raise DifflensError(f"{label}: only {n} readable image(s) out of {source.n}; at least 2 are needed.",
                            "add images (unreadable files are listed with --strict)")
    return Extracted(pool3=np.concatenate(pools), logits=np.concatenate(logits) if keep_logits else None,
                     log=log, seconds=seconds)
