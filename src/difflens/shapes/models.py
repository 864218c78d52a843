"""The shipped shapes-world models: where they are, and a SHA-256 check of every file.

``pretrained/`` (installed with the package) holds three standard folders, each loadable offline:

* ``unet/``  — a ``StableDiffusionPipeline`` (SD 1.x layout; ``DiffusionPipeline.from_pretrained``)
* ``mmdit/`` — a ``StableDiffusion3Pipeline`` (``text_encoder_3=None``; the CLIP text tower twice)
* ``clip/``  — a ``CLIPModel`` with its ``CLIPTokenizer``

``manifest.json`` records every file's SHA-256 and size, the command that made them, the per-stage
wall time, and the library versions. No torch is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from difflens.errors import DifflensError
from difflens.hashing import sha256_file

Family = Literal["unet", "mmdit"]
FAMILIES: tuple[str, ...] = ("unet", "mmdit")
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = "manifest.json"


def _folder(name: str) -> str:
    path = PRETRAINED_DIR / name
    if not (path / ("model_index.json" if name in FAMILIES else "config.json")).is_file():
        raise DifflensError(f"the shipped shapes model {name!r} is missing at {path}",
                            "reinstall difflens, or rebuild it: python -m difflens.shapes.train --out "
                            f"{PRETRAINED_DIR}")
    return str(path)


def pretrained(family: Family = "unet") -> str:
    """Local folder of the shipped ``family`` pipeline, for ``DiffusionPipeline.from_pretrained``."""
    if family not in FAMILIES:
        raise DifflensError(f"unknown shapes family {family!r}", f"choose from {', '.join(FAMILIES)}")
    return _folder(family)


def pretrained_clip() -> str:
    """Local folder of the shipped ``CLIPModel`` + ``CLIPTokenizer``."""
    return _folder("clip")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path, command: str, stages: dict[str, object], note: str = "") -> Path:
    """Write ``root/manifest.json``: SHA-256 and size of every file under ``root``, command, versions."""
    import diffusers
    import numpy
    import torch
    import transformers

    files = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in _files(root)}
    record = {
        "command": command,
        "note": note,
        "stages": stages,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "numpy": numpy.__version__},
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
    }
    dest = root / MANIFEST
    dest.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return dest


def manifest(root: Path = PRETRAINED_DIR) -> dict:
    """The recorded manifest of ``root`` (default: the shipped models)."""
    path = root / MANIFEST
    if not path.is_file():
        raise DifflensError(f"no {MANIFEST} in {root}",
                            "rebuild with python -m difflens.shapes.train --out DIR")
    return json.loads(path.read_text())


def check_files(root: Path = PRETRAINED_DIR) -> list[str]:
    """Problems found comparing the files under ``root`` with its manifest (empty list: all match)."""
    recorded = manifest(root)["files"]
    present = {p.relative_to(root).as_posix(): p for p in _files(root)}
    problems = [f"missing: {name}" for name in recorded if name not in present]
    problems += [f"not recorded: {name}" for name in present if name not in recorded]
    problems += [f"SHA-256 differs: {name}" for name, p in present.items()
                 if name in recorded and sha256_file(p) != recorded[name]["sha256"]]
    return problems
