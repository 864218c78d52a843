"""Cheap checks that run at the top of every command, before any model, image or torch is loaded.

A result is only useful if it can be written, so output paths are checked first; then dtypes and devices.
Each problem is a :class:`~difflens.errors.DifflensError` (one line, exit 2, nothing written).

- Output file (``--json``, ``--save-stats``, ``stats build --out``, ``report --out``...): not an existing
  folder; the nearest existing ancestor is a folder (not a file) where a file can be created. An existing
  file is replaced (atomically, when the result is written). ``-`` means stdout where a flag allows it.
- Output folder (``--out`` of generate, schedule, attention, latent, analyze, demo): not an existing file;
  an existing folder is written into (resumable modes rely on that), so it must accept new files.
- ``--dtype``: one of :data:`DTYPES`.
- ``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, parsed as text first (so ``gpu``,
  ``tpu`` or ``cuda:abc`` fail before torch is imported). ``cuda`` on a Linux machine without any GPU
  driver device node (``/dev/nvidia*``, ``/dev/kfd``, ``/dev/dxg``) or on macOS, and ``mps`` off macOS,
  fail without torch too; otherwise torch is imported to ask whether that device exists.

"Can a file be created there" is asked by creating and removing an empty temporary file: ``os.access`` says
yes to root on a read-only folder and knows nothing of mounts such as ``/proc``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from difflens.config import DTYPES
from difflens.errors import DifflensError

DEVICE_KINDS: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N", "mps")
STDOUT = "-"

OutputKind = Literal["file", "folder"]
PathLike = str | os.PathLike[str]

_DEVICE = re.compile(r"^(?P<kind>cpu|cuda|mps)(?::(?P<index>\d+))?$")
_DEVICE_HINT = "use --device cpu, cuda, cuda:N (N = 0, 1, ...) or mps, or leave it out (auto)"


def _nearest_existing(path: Path) -> Path:
    """The deepest ancestor of ``path`` (``path`` excluded) that exists, or ``path``'s anchor."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return parent
    return Path(path.anchor or ".")


def _can_create_in(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else the operating system's reason."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(prefix=".difflens-probe-", dir=folder)
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # e.g. /proc: the folder exists but takes no new entries
            return "it does not accept new files"
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _check_parents(path: Path, flag: str, noun: str) -> None:
    """The folder ``path`` would be created in must be creatable: its nearest existing ancestor is a
    writable folder."""
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise DifflensError(f"{flag} {path}: {anchor} is a file, so no {noun} can be created under it.",
                            f"pass a {noun} path whose parent is a folder")
    reason = _can_create_in(anchor)
    if reason is not None:
        raise DifflensError(f"{flag} {path}: cannot write in {anchor} ({reason}).",
                            f"pass a {noun} path in a folder you can write to")


def check_output_file(path: PathLike | None, flag: str, *, allow_stdout: bool = False) -> None:
    """``path`` (given as ``flag``) can be written as a file; ``None`` (not asked for) passes.

    ``-`` passes when ``allow_stdout`` (the result goes to stdout) and is refused otherwise.
    """
    if path is None:
        return
    text = os.fspath(path)
    if text == STDOUT:
        if allow_stdout:
            return
        raise DifflensError(f"{flag} - (stdout) is not supported for this option.", f"pass {flag} FILE")
    if not text.strip():
        raise DifflensError(f"{flag} was given an empty path.", f"pass {flag} FILE")
    p = Path(text).expanduser()
    if p.is_dir():
        raise DifflensError(f"{flag} {p} is a folder, not a file.",
                            f"pass a file path for {flag}, e.g. a new file inside that folder")
    if os.path.lexists(p) and not p.is_file():
        raise DifflensError(f"{flag} {p} exists and is not a regular file.", f"pass another {flag} path")
    _check_parents(p, flag, "file")


def check_output_dir(path: PathLike | None, flag: str = "--out") -> None:
    """``path`` (given as ``flag``) can be used as an output folder: created, or written into."""
    if path is None:
        return
    text = os.fspath(path)
    if not text.strip():
        raise DifflensError(f"{flag} was given an empty path.", f"pass {flag} FOLDER")
    p = Path(text).expanduser()
    if p.is_dir():
        reason = _can_create_in(p)
        if reason is not None:
            raise DifflensError(f"{flag} {p}: cannot write in this folder ({reason}).",
                                f"pass an {flag} folder you can write to")
        return
    if os.path.lexists(p):
        raise DifflensError(f"{flag} {p} exists and is not a folder.", f"pass a folder path for {flag}")
    _check_parents(p, flag, "folder")


def check_distinct(paths: Mapping[str, PathLike | None]) -> None:
    """No two output options name the same file (the second write would replace the first)."""
    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if path is None or os.fspath(path) == STDOUT:
            continue
        key = os.path.normcase(os.path.abspath(os.path.expanduser(os.fspath(path))))
        if key in seen:
            raise DifflensError(f"{seen[key]} and {flag} name the same file {path}.",
                                "give each output its own path")
        seen[key] = flag


def check_dtype(dtype: str | None, flag: str = "--dtype") -> None:
    """``dtype`` is one of :data:`DTYPES` (``None``: the default)."""
    if dtype is not None and dtype not in DTYPES:
        raise DifflensError(f"unknown {flag} {dtype!r}.", f"use one of {', '.join(DTYPES)}")


def parse_device(device: str | None, flag: str = "--device") -> tuple[str, int | None]:
    """``(kind, index)`` of a device name, by text alone (no torch): kind is auto, cpu, cuda or mps."""
    if device is None or device.strip().lower() in ("", "auto"):
        return "auto", None
    m = _DEVICE.match(device.strip())
    if m is None:
        raise DifflensError(f"unknown {flag} {device!r}.", _DEVICE_HINT)
    kind, index = m.group("kind"), m.group("index")
    if index is not None and kind != "cuda":
        raise DifflensError(f"{flag} {device!r}: only cuda takes a device index.", _DEVICE_HINT)
    return kind, None if index is None else int(index)


def check_device(device: str | None, flag: str = "--device") -> None:
    """A valid device name (checked as text, see :func:`parse_device`) that exists on this machine.

    ``auto`` and ``cpu`` never import torch; ``cuda``/``cuda:N``/``mps`` import it to ask, unless the
    machine certainly has no such device (:func:`_may_have_cuda`, macOS for ``mps``).
    """
    kind, index = parse_device(device, flag)
    if kind in ("auto", "cpu"):
        return
    if kind == "cuda" and not _may_have_cuda():
        raise DifflensError(f"{flag} {device} was asked for, but no CUDA device is available (no GPU "
                            "driver device found).", "use --device cpu, or leave --device out (auto)")
    if kind == "mps" and sys.platform != "darwin":
        raise DifflensError(f"{flag} mps was asked for, but MPS exists only on Apple computers.",
                            "use --device cpu")
    import torch

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise DifflensError(f"{flag} mps was asked for, but no Apple MPS device is available.",
                                "use --device cpu")
        return
    if not torch.cuda.is_available():
        raise DifflensError(f"{flag} {device} was asked for, but no CUDA device is available.",
                            "use --device cpu, or leave --device out (auto)")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DifflensError(f"{flag} {device}: this machine has {count} CUDA device(s) "
                            f"(cuda:0..cuda:{count - 1}).", f"use --device cuda:0..cuda:{count - 1}")


def _may_have_cuda() -> bool:
    """False only when CUDA certainly cannot work, known without importing torch: macOS, or Linux without
    the device nodes every CUDA (or ROCm, or WSL GPU) driver creates. Elsewhere torch is asked."""
    if sys.platform == "darwin":
        return False
    if not sys.platform.startswith("linux"):
        return True
    nodes = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
    return any(os.path.exists(n) for n in nodes) or bool(glob.glob("/dev/nvidia*"))


def preflight(*, files: Mapping[str, PathLike | None] | None = None,
              folders: Mapping[str, PathLike | None] | None = None,
              stdout_ok: Iterable[str] = ("--json",),
              dtype: str | None = None, device: str | None = None) -> None:
    """Every cheap check of one command, in the order that keeps torch unloaded for as long as possible:
    output files (flag -> path; ``-`` allowed for the flags in ``stdout_ok``), output folders, no two
    outputs on one path, dtype, then device."""
    allowed = set(stdout_ok)
    for flag, path in (files or {}).items():
        check_output_file(path, flag, allow_stdout=flag in allowed)
    for flag, path in (folders or {}).items():
        check_output_dir(path, flag)
    check_distinct({**(files or {}), **(folders or {})})
    check_dtype(dtype)
    check_device(device)

