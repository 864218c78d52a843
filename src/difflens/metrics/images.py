"""The one set of image-reading rules of difflens (metrics, datasets, latent): the image extensions, the
to-RGB rule, the unreadable-or-oversized rule, folder listing, and uint8 image arrays.

**The to-RGB rule** (one rule for every reader in difflens):

* 8-bit images are converted exactly as PIL's ``Image.convert("RGB")`` converts them, which is what
  torch-fidelity, clean-fid and pytorch-fid do, so the same files give the same pixels there and here:
  grayscale (``L``, ``1``) is replicated to three channels; palette (``P``) images are looked up in their
  palette; ``CMYK``/``YCbCr``/``LAB`` use PIL's conversion.
* **Alpha is dropped, not composited**: an ``RGBA``/``LA``/``PA`` image (or a palette with a transparent
  entry) keeps the colour stored under the alpha channel. Compositing on a background would change the
  numbers relative to every reference implementation, all of which drop alpha.
* **16-bit images keep their high byte** (``v >> 8``, i.e. ``floor(v / 256)``): PIL already reads 16-bit
  colour PNGs this way; difflens applies the same rule to 16-bit grayscale (``I;16*`` modes), where
  ``convert("RGB")`` would instead clip every value above 255 to white. 32-bit integer grayscale (``I``)
  is taken as 16-bit data (clipped to 0..65535, then ``>> 8``).
* Animated files and multi-page TIFFs use their first frame. EXIF orientation is not applied (as in the
  reference tools).

**Extensions** (:data:`IMAGE_EXTENSIONS`, any case): ``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``,
``.tif``, ``.tiff``; the same list in every mode (clean-fid and pytorch-fid read TIFF too).

**Unreadable or oversized images** (:func:`read_image` raises :class:`ImageReadError`): corrupt, truncated or
unsupported files, floating-point images, and images of more pixels than PIL's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 by default, e.g. a 20000x20000 header), which are refused from
their header before any pixel is decoded. Every mode that reads a set of images skips such a file and lists it
as a warning (:class:`ReadLog`), or stops with an error naming it under ``--strict``; a command that needs one
particular image (``latent interpolate --images``) stops with an error.

**Folders** are searched recursively (following symbolic links, each real folder once) for files with one of
the extensions; names starting with ``.`` (hidden files and folders such as ``.ipynb_checkpoints`` or macOS
``._*`` files) are skipped. Files are read in sorted order of their path relative to the folder, so results do
not depend on the file system's listing order.

**Arrays**: a ``.npy`` file, or an ``.npz`` holding one array (or an array named ``images``), of dtype uint8
and shape ``(N, H, W, 3)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

#: Short text of the rule, for help texts and result files.
RGB_RULE = ("8-bit: PIL convert('RGB') (grayscale replicated, palette looked up); alpha dropped, not "
            "composited; 16-bit: high byte (v >> 8)")


class ImageReadError(Exception):
    """One image could not be read (corrupt, truncated, unsupported)."""


def to_rgb_uint8(image: Any) -> Any:
    """Convert a PIL image to an ``(H, W, 3)`` uint8 array by the module's to-RGB rule."""
    import numpy as np

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image)
        if mode == "I":
            arr = np.clip(arr, 0, 65535)
        gray = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageReadError("floating-point (mode F) images are not supported")
    if mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"unexpected pixel layout {arr.shape} after conversion from mode {mode}")
    return arr


def max_image_pixels() -> int | None:
    """The pixel limit of the oversized rule: PIL's ``Image.MAX_IMAGE_PIXELS`` (None: no limit)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else int(limit)


def _silence_bomb_warning() -> None:
    """PIL warns in ``open`` about images over the limit; :func:`read_image` refuses them itself, with its own
    message. A filter for that one category, (re)installed on each call: ``catch_warnings`` is not
    thread-safe (images are decoded in threads), and a caller's ``catch_warnings`` may drop a filter set
    once."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def read_image(path: str | Path) -> Any:
    """Read one image file as ``(H, W, 3)`` uint8 (see the module docstring for the rules).

    Raises :class:`ImageReadError` for unreadable, truncated, unsupported or oversized files (the size is
    checked from the header, before any pixel is decoded).
    """
    from PIL import Image, UnidentifiedImageError

    _silence_bomb_warning()
    try:
        with Image.open(path) as img:
            limit = max_image_pixels()
            width, height = img.size
            if limit is not None and width * height > limit:
                raise ImageReadError(f"image of {width}x{height} pixels is over the limit of {limit:,} "
                                     "pixels (PIL.Image.MAX_IMAGE_PIXELS)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            arr = to_rgb_uint8(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # PIL refuses twice the limit in open(), before our check
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageReadError(f"image of {size} is over the limit of {max_image_pixels() or 0:,} pixels "
                             "(PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{type(exc).__name__}: {exc}") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError("image has zero size")
    return arr


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by their relative path; see the module docstring."""
    root = Path(folder)
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


@dataclass
class ReadLog:
    """Files skipped while reading (path, reason), in reading order."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def warnings(self, label: str) -> list[str]:
        if not self.skipped:
            return []
        shown = "; ".join(f"{p} ({r})" for p, r in self.skipped[:5])
        more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
        return [f"{label}: skipped {len(self.skipped)} unreadable image file(s): {shown}{more}"]


def iter_folder_images(files: Sequence[Path], log: ReadLog, strict: bool = False,
                       label: str = "images") -> Iterator[Any]:
    """Yield ``(H, W, 3)`` uint8 arrays for ``files``; unreadable files are recorded in ``log`` and skipped,
    or raise :class:`DifflensError` when ``strict``."""
    for path in files:
        try:
            yield read_image(path)
        except ImageReadError as exc:
            if strict:
                raise DifflensError(f"{label}: cannot read image {path}: {exc}.",
                                    "remove or replace the file, or drop --strict to skip unreadable "
                                    "images with a warning") from None
            log.skipped.append((str(path), str(exc)))


def readable_files(files: Sequence[Path], log: ReadLog, strict: bool = False, label: str = "images",
                   workers: int | None = None) -> list[int]:
    """Indices of the ``files`` that read by the rules of this module, in order; the others are recorded in
    ``log`` (or, with ``strict``, the first is a :class:`DifflensError`). Each file is decoded once, in
    ``workers`` threads (PIL releases the GIL while decoding), and the pixels are dropped: for readers that
    must know the readable set before they start (the embedding metrics pair images with prompts; the
    latent mode checks its images before loading a model)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(path: Path) -> str | None:
        try:
            read_image(path)
        except ImageReadError as exc:
            return str(exc)
        return None

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check, files))
    kept: list[int] = []
    for i, (path, reason) in enumerate(zip(files, reasons, strict=True)):
        if reason is None:
            kept.append(i)
        elif strict:
            raise DifflensError(f"{label}: cannot read image {path}: {reason}.",
                                "remove or replace the file, or drop --strict to skip unreadable images with "
                                "a warning")
        else:
            log.skipped.append((str(path), reason))
    return kept


def check_image_array(arr: Any, name: str) -> None:
    """Raise :class:`DifflensError` unless ``arr`` is uint8 ``(N, H, W, 3)``."""
    import numpy as np

    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise DifflensError(
            f"{name}: expected uint8 images of shape (N, H, W, 3), got {arr.dtype} {tuple(arr.shape)}.",
            "store images as uint8 NHWC RGB (e.g. np.transpose(x, (0, 2, 3, 1)) for NCHW, "
            "np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1])")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DifflensError(f"{name}: images have zero size {tuple(arr.shape)}.", "check the array")
