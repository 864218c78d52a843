"""The one extraction loop: each image is decoded once and fed to every extractor a run needs.

Sources (:func:`image_items`): a folder or list of image files, uint8 arrays (``(N, H, W, 3)``, memory
mapped or a list of ``(H, W, 3)``), uint8 torch tensors ``(N, 3, H, W)`` on any device, PIL images, a
dataset (:class:`difflens.refsets.dataset_source.ImageSource`, which decodes its rows itself) and any
iterable of those items (generated samples). Items are decoded by the one image rule
(:func:`difflens.metrics.images.read_image`) and given each extractor's per-image ``prepare`` step in a
few reader threads that stay a bounded window (``2 * batch_size``, at least 8) ahead of the networks, so
decoding overlaps the forward passes and memory does not grow with the number of images: only the
features are kept (or, with :func:`feature_batches`, not even those). Batches hold ``batch_size``
readable images in source order, so every extractor sees the batches a one-extractor run would give it.
Under torchrun each rank passes its share (:func:`difflens.distributed.shard_source`) through this loop.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.images import ImageReadError, ReadLog

DEFAULT_BATCH_SIZE = 50
LayerKey = tuple[str, str]  # (extractor name, layer)


@dataclass
class FeatureChunk:
    """The features of one batch: ``{(extractor, layer): (B, D) float32}``; ``kept`` are the positions (in
    source order) of the images in the batch, ``consumed`` the source items read for it (skipped included,
    so a progress bar reaches its total)."""

    features: dict[LayerKey, Any]
    kept: list[int]
    consumed: int

    def __len__(self) -> int:  # difflens.console.progress advances by len()
        return self.consumed


@dataclass
class Extraction:
    """The features of a whole source (rows in source order, unreadable images skipped)."""

    features: dict[LayerKey, Any]
    kept: list[int] = field(default_factory=list)
    log: ReadLog = field(default_factory=ReadLog)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.kept)


def _decode(item: Any) -> Any:
    """One item as a uint8 (H, W, 3) array by the one image rule (paths decoded, PIL converted)."""
    from pathlib import Path

    from difflens.metrics import images as _images

    if isinstance(item, (str, Path)):
        return _images.read_image(item)
    if hasattr(item, "mode") and hasattr(item, "size") and not hasattr(item, "shape"):  # PIL image
        return _images.to_rgb_uint8(item)
    return item


def _tensor_images(t: Any) -> Iterator[Any]:
    """uint8 (N, 3, H, W) torch tensor -> (H, W, 3) numpy arrays, moved to the CPU a batch at a time."""
    for start in range(0, int(t.shape[0]), 64):
        block = t[start:start + 64].detach().permute(0, 2, 3, 1).contiguous().cpu().numpy()
        yield from block


def image_items(source: Any, workers: int | None = None) -> tuple[Iterable[Any], int | None, bool]:
    """``(items, count or None, already decoded)`` of a source (see the module docstring)."""
    import numpy as np

    if hasattr(source, "iter_images"):  # a dataset, decoded by its own reader in a bounded window
        if hasattr(source, "image_column"):  # refsets ImageSource: (row, image) pairs
            return (arr for _, arr in source.iter_images(workers)), len(source), True
        return source.iter_images(workers), len(source), True  # refsets.dataset_stream.DatasetImages
    if getattr(source, "kind", None) == "folder":
        return source.files, source.n, False
    if getattr(source, "kind", None) == "images":
        imgs = source.images
        if hasattr(imgs, "iter_images"):  # a dataset read as a stream (refsets.dataset_stream)
            return imgs.iter_images(workers), len(imgs), True
        return (np.asarray(imgs[i]) for i in range(len(imgs))), len(imgs), True
    if hasattr(source, "detach") and hasattr(source, "shape"):  # torch tensor
        if str(source.dtype) != "torch.uint8" or source.ndim != 4 or int(source.shape[1]) != 3:
            raise DifflensError(f"a tensor of images must be uint8 (N, 3, H, W), got {source.dtype} "
                                f"{tuple(source.shape)}.",
                                "convert with (x * 255).round().clamp(0, 255).to(torch.uint8)")
        return _tensor_images(source), int(source.shape[0]), True
    if isinstance(source, np.ndarray):
        return (source[i] for i in range(len(source))), len(source), True
    return source, (len(source) if hasattr(source, "__len__") else None), False


Prepared = tuple[list[Any] | None, str | None, Any]  # (image per extractor, error, decoded shape)


def _prepare(item: Any, decoded: bool, preps: list[Any]) -> Prepared:
    try:
        img = item if decoded else _decode(item)
    except ImageReadError as exc:
        return None, str(exc), None
    return [img if p is None else p(img) for p in preps], None, getattr(img, "shape", None)


def _prepared(items: Iterable[Any], decoded: bool, preps: list[Any], workers: int, window: int
              ) -> Iterator[tuple[Any, list[Any] | None, str | None, Any]]:
    """(item, [prepared image per extractor] or None, error or None, decoded shape) in source order,
    read ahead."""
    if decoded and all(p is None for p in preps):  # nothing to do per image: no threads needed
        for item in items:
            yield "array", [item] * len(preps), None, getattr(item, "shape", None)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="difflens-read") as pool:
        pending: deque[tuple[Any, Future[Prepared]]] = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(_prepare, item, decoded, preps)))
                if len(pending) >= window:
                    head, fut = pending.popleft()
                    yield (head, *fut.result())
            while pending:
                head, fut = pending.popleft()
                yield (head, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()


def _run(extractor: Any, images: list[Any], prompts: list[str] | None = None) -> dict[str, Any]:
    """One batch through one extractor; a ``prompted`` extractor (a preference model scoring image and
    prompt together) also gets the batch's prompts, one per image."""
    forward = getattr(extractor, "forward", None)
    kwargs = {"prompts": prompts} if getattr(extractor, "prompted", False) else {}
    if kwargs and prompts is None:
        raise DifflensError(f"extractor {getattr(extractor, 'name', extractor)!r} scores images against "
                            "their prompts, but no prompts were given.",
                            "pass --prompts FILE, or a folder with a manifest.jsonl / metadata.jsonl")
    if forward is not None and hasattr(extractor, "prepare"):
        out = forward(images, **kwargs)
    else:
        out = extractor(images, **kwargs)
    if not isinstance(out, Mapping):
        raise DifflensError(f"extractor {getattr(extractor, 'name', extractor)!r} returned "
                            f"{type(out).__name__}, not a dict of layer -> (N, D) array.",
                            "return {layer: features} from __call__")
    return dict(out)


def feature_batches(source: Any, extractors: Mapping[str, Any], *, batch_size: int = DEFAULT_BATCH_SIZE,
                    keep: Iterable[LayerKey] | None = None, strict: bool = False, label: str = "images",
                    log: ReadLog | None = None, workers: int | None = None,
                    split_sizes: bool = False, prompts: list[str] | None = None) -> Iterator[FeatureChunk]:
    """Stream a source through every extractor (``{name: extractor}``), one :class:`FeatureChunk` per
    batch of ``batch_size`` readable images (``split_sizes``: a batch also ends where the image size
    changes). ``keep``: the (extractor, layer) pairs to return (default all). Unreadable items are skipped
    and listed in ``log`` (``strict``: DifflensError at the first). ``prompts``: one per source item (in
    source order), handed to ``prompted`` extractors for the images of each batch."""
    import numpy as np

    if batch_size < 1:
        raise DifflensError(f"--batch-size must be at least 1, got {batch_size}.", "use e.g. --batch-size 50")
    if not extractors:
        raise DifflensError("no extractor to run.", "name at least one extractor")
    log = log if log is not None else ReadLog()
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    names = list(extractors)
    wanted = set(keep) if keep is not None else None
    preps = [getattr(ext, "prepare", None) if getattr(ext, "needs_prepare", True) else None
             for ext in (extractors[n] for n in names)]
    items, _, decoded = image_items(source, workers)
    batch: list[list[Any]] = [[] for _ in names]
    kept: list[int] = []
    consumed = 0

    def flush() -> FeatureChunk:
        feats: dict[LayerKey, Any] = {}
        for name, images in zip(names, batch, strict=True):
            if not images:
                continue
            batch_prompts = [prompts[i] for i in kept] if prompts is not None else None
            for layer, arr in _run(extractors[name], images, batch_prompts).items():
                if wanted is None or (name, layer) in wanted:
                    feats[(name, layer)] = np.asarray(arr)
        return FeatureChunk(feats, list(kept), consumed)

    pos = -1
    shape: Any = None
    for item, prepared, err, size in _prepared(items, decoded, preps, workers, window=max(2 * batch_size, 8)):
        pos += 1
        consumed += 1
        if err is not None or prepared is None:
            if strict:
                raise DifflensError(f"{label}: cannot read image {item}: {err}.",
                                    "remove or replace the file, or drop --strict to skip unreadable images "
                                    "with a warning")
            log.skipped.append((str(item), str(err)))
        else:
            if split_sizes and kept and shape != size:
                chunk = flush()
                chunk.consumed -= 1  # the item just read belongs to the next batch
                yield chunk
                batch, kept, consumed = [[] for _ in names], [], 1
            shape = size
            for lst, img in zip(batch, prepared, strict=True):
                lst.append(img)
            kept.append(pos)
        if len(kept) >= batch_size:
            yield flush()
            batch, kept, consumed = [[] for _ in names], [], 0
    if consumed:
        yield flush()


def extract(source: Any, extractors: Mapping[str, Any], *, batch_size: int = DEFAULT_BATCH_SIZE,
            keep: Iterable[LayerKey] | None = None, strict: bool = False, label: str = "images",
            show_progress: bool = False, description: str | None = None, workers: int | None = None,
            min_images: int = 0, split_sizes: bool = False) -> Extraction:
    """Run :func:`feature_batches` to the end and concatenate the features of each (extractor, layer).

    ``min_images``: DifflensError when fewer images could be read (e.g. 2 for statistics)."""
    import numpy as np

    from difflens.console import progress

    log = ReadLog()
    parts: dict[LayerKey, list[Any]] = {}
    kept: list[int] = []
    t0 = time.perf_counter()
    chunks: Iterable[FeatureChunk] = feature_batches(source, extractors, batch_size=batch_size, keep=keep,
                                                     strict=strict, label=label, log=log, workers=workers,
                                                     split_sizes=split_sizes)
    if show_progress:
        _, total, _ = image_items(source) if not hasattr(source, "iter_images") else (None, len(source), 0)
        chunks = progress(chunks, total=total, description=description or label, unit="img")
    for chunk in chunks:
        kept += chunk.kept
        for key, arr in chunk.features.items():
            parts.setdefault(key, []).append(arr)
    seconds = time.perf_counter() - t0
    if len(kept) < min_images:
        n = getattr(source, "n", None)
        of = f" out of {n}" if n is not None else ""
        raise DifflensError(f"{label}: only {len(kept)} readable image(s){of}; at least {min_images} are "
                            "needed.", "add images (unreadable files are listed with --strict)")
    feats = {k: np.concatenate(v) for k, v in parts.items()}
    return Extraction(features=feats, kept=kept, log=log, seconds=seconds)
