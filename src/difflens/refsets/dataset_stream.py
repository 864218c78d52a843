"""A dataset's images as a streamed image array for ``difflens metrics --real <dataset spec>``.

:class:`DatasetImages` stands where a uint8 ``(N, H, W, 3)`` array used to be materialized (COCO-30k at
256 px is about 6 GB): it has a length, a ``shape`` (from the first image, decoded once up front so a
dataset without decodable images or of the wrong kind fails before any model loads), slices (a torchrun
rank's share of the rows) and :meth:`iter_images`, which the extraction loop
(:mod:`difflens.features.extract`) reads, decoding each row once in a bounded window. Datasets whose
images differ in size need ``--reference-size`` (as before); the error comes at the first differing image.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from difflens.errors import DifflensError


class DatasetImages:
    """The decoded images of an :class:`~difflens.refsets.dataset_source.ImageSource`, read on demand."""

    def __init__(self, source: Any, spec: str) -> None:
        self.source = source
        self.spec = spec
        first = next((arr for _, arr in _head(source)), None)
        if first is None:
            raise DifflensError(f"{spec} holds no decodable images.", "check --image-column and the data")
        self.image_shape: tuple[int, ...] = tuple(first.shape)
        self.warnings: list[str] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def dtype(self) -> str:
        return "uint8"

    @property
    def rows(self) -> Any:
        return self.source.rows

    def __len__(self) -> int:
        return len(self.source.rows)

    def __getitem__(self, index: slice) -> DatasetImages:
        """The images of a slice of the rows (a rank's share); integer indexing is not supported."""
        if not isinstance(index, slice):
            raise TypeError("DatasetImages supports slices only (it is read as a stream)")
        other = copy.copy(self)
        other.source = copy.copy(self.source)
        other.source.rows = self.source.rows[index]
        other.warnings = []
        return other

    def iter_images(self, workers: int | None = None) -> Iterator[Any]:
        """The decoded images in row order (undecodable rows skipped and reported in ``warnings`` at the
        end); a DifflensError at the first image whose size differs from the first."""
        for _, arr in self.source.iter_images(workers):
            if tuple(arr.shape) != self.image_shape:
                raise DifflensError(f"the images of {self.spec} have different sizes "
                                    f"{sorted({self.image_shape, tuple(arr.shape)})}.",
                                    "pass --reference-size N to resize and center-crop them to one size")
            yield arr
        self.warnings = list(self.source.warnings)

    def __iter__(self) -> Iterator[Any]:
        return self.iter_images()


def _head(source: Any) -> Iterator[tuple[int, Any]]:
    """The first decodable row of ``source`` (a copy, so the source's own read report is untouched)."""
    probe = copy.copy(source)
    probe.warnings = []
    probe.skipped = []
    it = probe.iter_images(1)
    try:
        yield next(it)
    except StopIteration:
        return
    finally:
        it.close()
