"""Reference preprocessing: resize the shorter side, then center-crop to a square (``--reference-size``).

This is the protocol papers state as "resized and center-cropped to 256" (the COCO-30k evaluation of
text-to-image models, ImageNet at 256 or 512). It matches torchvision's
``Compose([Resize(size, InterpolationMode.BICUBIC), CenterCrop(size)])`` on PIL images exactly:

* resize: the shorter side becomes ``size``, the longer ``int(size * long / short)`` (truncated, as
  torchvision computes it), with PIL's bicubic filter, which is antialiased when it shrinks (its support
  grows with the scale factor);
* crop: top = ``round((h - size) / 2)``, left = ``round((w - size) / 2)`` with Python's round.

The settings are part of the protocol fingerprint (:meth:`ReferencePreprocess.fingerprint`): statistics
made at another size, or without this step, are a different protocol. Where the protocol says so the same
function is applied to the generated images (:meth:`ReferencePreprocess.apply_array`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError

PREPROCESS_VERSION = 1
MIN_SIZE = 8
MAX_SIZE = 4096


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``size`` (torchvision's rounding)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_center_crop(image: Any, size: int) -> Any:
    """A PIL image resized (shorter side -> ``size``, bicubic, antialiased) and center-cropped to
    ``size`` x ``size``."""
    from PIL import Image

    w, h = image.size
    new_w, new_h = resized_shape(w, h, size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    if (new_w, new_h) == (size, size):
        return image
    return image.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class ReferencePreprocess:
    """The reference preprocessing of a protocol; ``size=None`` leaves images as they are."""

    size: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None and not (MIN_SIZE <= self.size <= MAX_SIZE):
            raise DifflensError(f"--reference-size {self.size} is out of range.",
                                f"pass a size between {MIN_SIZE} and {MAX_SIZE} pixels, e.g. 256 or 512")

    def apply(self, image: Any) -> Any:
        """Apply to a PIL image (convert it to RGB first)."""
        return image if self.size is None else resize_center_crop(image, self.size)

    def apply_array(self, array: Any) -> Any:
        """Apply to a uint8 (H, W, 3) array; returns a uint8 (size, size, 3) array."""
        import numpy as np
        from PIL import Image

        if self.size is None:
            return array
        return np.asarray(resize_center_crop(Image.fromarray(np.asarray(array, dtype=np.uint8)), self.size))

    def to_dict(self) -> dict[str, Any] | None:
        if self.size is None:
            return None
        return {"size": self.size, "resize": "shorter-side", "interpolation": "PIL bicubic (antialiased)",
                "crop": "center", "rounding": "torchvision", "version": PREPROCESS_VERSION}

    def fingerprint(self) -> dict[str, Any]:
        """The entry to merge into a protocol fingerprint."""
        return {"reference_preprocess": self.to_dict()}
