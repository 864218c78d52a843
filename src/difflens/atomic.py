"""Atomic writes: write to a temporary file in the destination folder, then rename.

A crash or kill never leaves a half-written result, cache or image behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Files completed by :func:`atomic_path` in this process: the count and the last one (for the Ctrl-C line).
_written: dict[str, Any] = {"count": 0, "last": None}


def written() -> tuple[int, Path | None]:
    """How many files this process has completed atomically so far, and the last of them."""
    return _written["count"], _written["last"]


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``, else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=suffix if suffix is not None else dest.suffix + ".tmp",
        dir=dest.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; results should get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
        _written["count"] += 1
        _written["last"] = dest
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(dest: str | Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON text :func:`write_json` writes (NaN/inf become null), newline-ended."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def write_json(dest: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (NaN/inf become null)."""
    write_text(dest, json_text(obj))


def save_npz(dest: str | Path, **arrays: Any) -> None:
    """``numpy.savez`` atomically (the temp file keeps the .npz suffix so numpy adds none)."""
    import numpy as np

    with atomic_path(dest, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def save_npy(dest: str | Path, array: Any) -> None:
    import numpy as np

    with atomic_path(dest, suffix=".npy") as tmp:
        np.save(tmp, array)


def save_image(dest: str | Path, image: Any) -> None:
    """Save a PIL image (format from ``dest``'s suffix) atomically."""
    dest = Path(dest)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(dest.suffix.lower(), dest.suffix.lstrip(".").upper())
    with atomic_path(dest) as tmp:
        image.save(tmp, format=fmt)


def save_figure(dest: str | Path, fig: Any, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=dest.suffix.lstrip(".") or "png")
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and non-finite floats to plain JSON values."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return _jsonable(obj.tolist())
    return obj
