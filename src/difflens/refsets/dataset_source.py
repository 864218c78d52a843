"""Images (and captions) from datasets: Hugging Face hub datasets and local dataset files.

The accepted specs are listed in :mod:`difflens.refsets.dataset_spec`; rows are read through
:mod:`difflens.refsets.dataset_tables` (the ``datasets`` library's edge is
:mod:`difflens.refsets.hf_datasets`).

Rows are read in ascending row order. ``num`` with ``subset_seed`` selects a reproducible subset
(:mod:`difflens.refsets.subset`); ``reference_size`` resizes and center-crops every image
(:mod:`difflens.refsets.preprocess`). Images are decoded by difflens, not by ``datasets``, with the metrics'
to-RGB rule (:mod:`difflens.metrics.images`): an image that fails to decode is skipped, counted and
reported in :attr:`ImageSource.warnings` (or an error with ``strict``).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.refsets.dataset_spec import DatasetSpec, parse_spec
from difflens.refsets.dataset_tables import RowTable, check_column, check_image_feature, open_dataset
from difflens.refsets.hf_datasets import datasets_env, guarded, offline_flag
from difflens.refsets.preprocess import ReferencePreprocess
from difflens.refsets.subset import Subset, draw_subset


@dataclass
class SkippedImage:
    """A row whose image could not be decoded."""

    row: int
    reason: str


def decode_image(value: Any, base_dir: Path | None = None) -> Any:
    """Decode one image cell (``{"bytes", "path"}``, bytes, a path or a PIL image) to uint8 (H, W, 3) by the
    metrics' to-RGB rule; raises ``ImageReadError`` when it cannot be read."""
    from PIL import Image

    from difflens.metrics.images import ImageReadError, read_image, to_rgb_uint8

    if isinstance(value, Image.Image):
        return to_rgb_uint8(value)
    data: bytes | None = None
    path: str | None = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value
    elif value is None:
        raise ImageReadError("the cell is empty")
    else:
        raise ImageReadError(f"unsupported cell type {type(value).__name__}")
    if data:
        return read_image(io.BytesIO(data))  # type: ignore[arg-type]
    if path:
        p = Path(path)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            raise ImageReadError(f"image file {p} does not exist")
        return read_image(p)
    raise ImageReadError("the cell holds neither bytes nor a path")


def caption_text(value: Any, row: int, column: str, label: str) -> str:
    """The caption of one row: a string, or the first string of a list (COCO rows carry ~5 captions)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        text = value[0]
    else:
        raise DifflensError(f"{label}: row {row} of caption column {column!r} holds {type(value).__name__} "
                            f"{str(value)[:60]!r}, not text.",
                            "pass --caption-column with a column of strings (or lists of strings)")
    text = text.strip()
    if not text:
        raise DifflensError(f"{label}: row {row} of caption column {column!r} is empty.",
                            "clean the dataset, or pick rows with captions")
    return text


class ImageSource:
    """The images (and captions) of the selected rows of a dataset, decoded and preprocessed on the fly.

    ``identity`` says which data was read (kind, name/path, config, split, revision, fingerprint, columns,
    subset); ``preprocessing`` is the reference preprocessing entry of the protocol fingerprint.
    :meth:`iter_batches` yields uint8 arrays (B, H, W, 3); images that fail to decode are skipped and listed
    in ``skipped`` and ``warnings`` once the iteration has passed them.
    """

    def __init__(self, spec: DatasetSpec, table: RowTable, identity: dict[str, Any], subset: Subset,
                 image_column: str | None, caption_column: str | None, preprocess: ReferencePreprocess,
                 offline: bool, strict: bool = False) -> None:
        self.spec = spec
        self.table = table
        self.subset = subset
        self.rows = subset.indices
        self.image_column = image_column
        self.caption_column = caption_column
        self.preprocess = preprocess
        self.offline = offline
        self.strict = strict
        self.identity = {**identity, "spec": spec.text, "num_rows": table.num_rows,
                         "image_column": image_column, "caption_column": caption_column,
                         "subset": subset.to_dict()}
        self.warnings: list[str] = []
        self.skipped: list[SkippedImage] = []
        self.num_decoded = 0
        self.pixels_sha256: str | None = None
        self._captions: list[str] | None = None

    kind = "dataset"

    @property
    def label(self) -> str:
        return f"dataset {self.spec.text}"

    @property
    def n(self) -> int:
        """Number of selected rows (images that fail to decode are skipped when read)."""
        return len(self.rows)

    def describe(self) -> str:
        size = self.preprocess.size
        prep = f", resized and center-cropped to {size}" if size else ""
        return f"{self.spec.text} ({len(self.rows)} of {self.table.num_rows} rows{prep})"

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.preprocess.fingerprint()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def captions(self) -> list[str] | None:
        """The caption of every selected row, in row order (None without a caption column)."""
        if self.caption_column is None:
            return None
        if self._captions is None:
            with datasets_env(self.offline):
                values = self.table.values(self.caption_column, self.rows)
            self._captions = [caption_text(v, int(r), self.caption_column, self.label)
                              for r, v in zip(self.rows, values, strict=True)]
        return self._captions

    def column_values(self, column: str) -> list[Any]:
        """Raw values of another column at the selected rows (for ids); error listing columns if absent."""
        check_column(self.table, column, "id", "--id-column", self.label)
        with datasets_env(self.offline):
            return self.table.values(column, self.rows)

    def _decode(self, value: Any) -> tuple[Any | None, str | None]:
        from difflens.metrics.images import ImageReadError

        try:
            return self.preprocess.apply_array(decode_image(value, self.table.base_dir)), None
        except ImageReadError as exc:
            return None, str(exc)

    def iter_images(self, workers: int | None = None) -> Iterator[tuple[int, Any]]:
        """(row index, uint8 (H, W, 3) image) for every selected row that decodes, in row order.

        Cells are read in order; decoding and preprocessing run in ``workers`` threads (PIL releases the
        GIL while decoding) a bounded window ahead, so memory stays flat."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        if self.image_column is None:
            raise DifflensError(f"{self.label}: no image column was given.", "pass --image-column")
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        window = 4 * workers
        self.skipped = []
        self.num_decoded = 0
        self.pixels_sha256 = None
        self.warnings = [w for w in self.warnings if not w.startswith(f"{self.label}: skipped")]
        digest = hashlib.sha256()

        def finish(row: int, result: tuple[Any | None, str | None]) -> Any | None:
            arr, err = result
            if err is not None:
                if self.strict:
                    raise DifflensError(f"{self.label}: row {row} of column {self.image_column!r} cannot be "
                                        f"decoded ({err}).", "drop --strict to skip such rows")
                self.skipped.append(SkippedImage(row, err))
                return None
            digest.update(f"{arr.shape}".encode())
            digest.update(arr.tobytes())
            self.num_decoded += 1
            return arr

        with ThreadPoolExecutor(workers, thread_name_prefix="difflens-decode") as pool:
            pending: deque[tuple[int, Any]] = deque()
            try:
                cells = self.table.iter_values(self.image_column, self.rows)
                if getattr(self.table, "uses_datasets", True):  # not pyarrow-only or folder tables
                    cells = guarded(cells, self.offline)
                for row, value in cells:
                    pending.append((row, pool.submit(self._decode, value)))
                    if len(pending) >= window:
                        head, fut = pending.popleft()
                        arr = finish(head, fut.result())
                        if arr is not None:
                            yield head, arr
                while pending:
                    head, fut = pending.popleft()
                    arr = finish(head, fut.result())
                    if arr is not None:
                        yield head, arr
            finally:
                for _, fut in pending:
                    fut.cancel()
        self.pixels_sha256 = digest.hexdigest()
        if self.skipped:
            shown = ", ".join(f"row {s.row} ({s.reason})" for s in self.skipped[:5])
            more = f", and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            self.warnings.append(f"{self.label}: skipped {len(self.skipped)} image(s) that failed to decode: "
                                 f"{shown}{more}")

    def iter_batches(self, batch_size: int, workers: int | None = None) -> Iterator[Any]:
        """uint8 arrays (B, H, W, 3) of consecutive decoded images, B <= ``batch_size``; a batch ends early
        where the image size changes (without ``reference_size``, datasets may mix sizes)."""
        import numpy as np

        if batch_size < 1:
            raise DifflensError(f"--batch-size must be positive, got {batch_size}.", "pass a positive number")
        batch: list[Any] = []
        for _, arr in self.iter_images(workers):
            if batch and (arr.shape != batch[0].shape or len(batch) == batch_size):
                yield np.stack(batch)
                batch = []
            batch.append(arr)
        if batch:
            yield np.stack(batch)

    def report(self) -> dict[str, Any]:
        """What was read (after an iteration): counts, skipped rows, pixel digest."""
        return {"num_selected": len(self), "num_decoded": self.num_decoded,
                "num_skipped": len(self.skipped), "skipped_rows": [s.row for s in self.skipped],
                "pixels_sha256": self.pixels_sha256}


def open_image_source(spec: str, image_column: str | None = "image", caption_column: str | None = None,
                      num: int | None = None, subset_seed: int = 0, reference_size: int | None = None,
                      offline: bool = False, streaming: bool = False, strict: bool = False) -> ImageSource:
    """Open a dataset spec (or a plain folder of images) as an :class:`ImageSource` of its (subset of) rows.

    Validates everything cheap up front (spec, dataset, split, columns, subset size, reference size) so a
    bad input fails before any image is decoded or any file written. ``image_column=None`` opens a caption
    source only. ``streaming`` applies to ``hf:`` specs (local parquet is always streamed).
    """
    preprocess = ReferencePreprocess(reference_size)
    parsed = parse_spec(spec, allow_folder=True)
    off = offline_flag(offline)
    opened = open_dataset(parsed, off, streaming)
    table = opened.table
    label = f"dataset {parsed.text}"
    if image_column is not None:
        check_column(table, image_column, "image", "--image-column", label)
        check_image_feature(table, image_column, label)
    if caption_column is not None:
        check_column(table, caption_column, "caption", "--caption-column", label)
    if table.num_rows is None:
        raise DifflensError(f"{label}: the number of rows is unknown in streaming mode, so rows cannot be "
                            "selected reproducibly.", "drop --streaming so the dataset is prepared locally")
    if table.num_rows == 0:
        raise DifflensError(f"{label} has no rows.", "pass a dataset (split) with data")
    subset = draw_subset(table.num_rows, num, subset_seed)
    return ImageSource(parsed, table, opened.identity, subset, image_column, caption_column, preprocess,
                       off, strict=strict)


def load_prompts_from_dataset(spec: str, caption_column: str, num: int | None = None, subset_seed: int = 0,
                              offline: bool = False, streaming: bool = False) -> list[str]:
    """Prompts for ``--prompts hf:...``: the captions of the selected rows, in row order."""
    source = open_image_source(spec, image_column=None, caption_column=caption_column, num=num,
                               subset_seed=subset_seed, offline=offline, streaming=streaming)
    captions = source.captions
    assert captions is not None
    return captions
