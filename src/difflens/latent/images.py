"""Loading image folders for the latent mode, with one resize rule for images of any size.

Reading follows difflens's one set of image rules (:mod:`difflens.metrics.images`): the same extensions, the
same to-RGB rule, and the same rule for unreadable or oversized files: :func:`screen_images` skips them with
a warning before the model is loaded (``--strict``: an error naming the file); :func:`load_images`, for
commands that need particular images (``interpolate --images``), stops with an error.

Resize rule (applied to every image, whatever its size, so folders of mixed sizes work): convert to RGB,
resize so that the *shorter* side equals the model's size S (PIL bicubic, aspect ratio kept), then
center-crop S x S. This is the reference preprocessing's function
(:func:`difflens.refsets.preprocess.resize_center_crop`, torchvision's ``Resize`` + ``CenterCrop`` rounding),
so there is one resize rule in difflens. Images already S x S are left untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.images import IMAGE_EXTENSIONS, ImageReadError, ReadLog, read_image, readable_files
from difflens.refsets.preprocess import resize_center_crop

__all__ = ["IMAGE_EXTENSIONS", "RESIZE_RULE", "iter_image_batches", "list_images", "load_image",
           "load_images", "resize_center_crop", "screen_images", "to_pil", "to_uint8"]

RESIZE_RULE = ("shorter side resized to {size} px (PIL bicubic, aspect kept), "
               "then center-cropped to {size}x{size}")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(paths: Sequence[str | Path], what: str = "images") -> list[Path]:
    """Image files from folders (non-recursive, sorted by name, hidden files skipped) and/or files, in the
    order given."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and _is_image(f))
            if not files:
                raise DifflensError(f"{what}: folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)}).",
                                    "pass a folder of image files")
            out.extend(files)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DifflensError(f"{what}: {p} is not an image file ({', '.join(IMAGE_EXTENSIONS)}).",
                                    "pass image files or folders of them")
            out.append(p)
        else:
            raise DifflensError(f"{what}: {p} does not exist.", "pass an existing image file or folder")
    if not out:
        raise DifflensError(f"no {what} given.", "pass at least one image file or folder")
    return out


def screen_images(files: Sequence[Path], what: str = "images",
                  strict: bool = False) -> tuple[list[Path], ReadLog]:
    """The files that can be read, and a log of those skipped (unreadable or oversized, the rule of
    :mod:`difflens.metrics.images`); with ``strict`` the first such file is an error. Each file is decoded
    once here, before any model is loaded, so a bad file never stops a run half way."""
    log = ReadLog()
    kept = [files[i] for i in readable_files(files, log, strict, what)]
    if not kept:
        raise DifflensError(f"{what}: none of the {len(files)} image file(s) can be read "
                            f"({log.skipped[0][0]}: {log.skipped[0][1]}).", "pass readable image files")
    return kept, log


def load_image(path: str | Path, size: int) -> Any:
    """One image as uint8 (size, size, 3): the to-RGB rule, then the resize rule; an error for unreadable or
    oversized files."""
    import numpy as np
    from PIL import Image

    try:
        arr = read_image(path)
    except ImageReadError as exc:
        raise DifflensError(f"cannot read image {path}: {exc}.", "remove or replace the file") from None
    return np.asarray(resize_center_crop(Image.fromarray(arr), size), dtype=np.uint8)


def load_images(paths: Sequence[str | Path], size: int, what: str = "images") -> tuple[list[Path], Any]:
    """Files and a float32 tensor (N, 3, size, size) in [0, 1], every image resized by the rule."""
    import numpy as np
    import torch

    files = list_images(paths, what)
    arrays = [load_image(f, size) for f in files]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return files, batch


def iter_image_batches(files: Sequence[str | Path], size: int, batch_size: int,
                       what: str = "images") -> Iterator[Any]:
    """Float32 [0,1] tensors (B, 3, size, size) of consecutive files, loaded lazily (the resize rule)."""
    import numpy as np
    import torch

    for start in range(0, len(files), batch_size):
        arrays = [load_image(f, size) for f in files[start:start + batch_size]]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(images: Any) -> Any:
    """[0,1] float tensor (N, 3, H, W) -> uint8 numpy (N, H, W, 3), rounded as diffusers' ``numpy_to_pil``
    does."""
    import numpy as np

    arr = images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (arr * 255).round().astype(np.uint8)


def to_pil(image_uint8: Any) -> Any:
    from PIL import Image

    return Image.fromarray(image_uint8)
