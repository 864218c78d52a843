"""Dataset specs: which strings name a dataset, and what they name.

* ``hf:NAME[@REVISION][:CONFIG][:SPLIT]``: a dataset on the Hugging Face hub (``owner/name``), read through
  the ``datasets`` library from its local cache or, when online, downloaded into it. With two fields after
  the name, the second is the config and the third the split; with one, it is a split when the default
  config has a split of that name, else a config. Offline, only the local cache is used (``datasets``'
  ``HF_DATASETS_CACHE``, by default ``$HF_HOME/datasets``).
* ``FILE.parquet`` (or a glob such as ``data/train-*.parquet``, or a folder of ``.parquet`` files): read
  in streaming mode (nothing is copied into a cache), one split.
* an Arrow folder written by ``Dataset.save_to_disk`` (``state.json``) or ``DatasetDict.save_to_disk``
  (``dataset_dict.json``; name the split as ``FOLDER:SPLIT``), memory-mapped.
* an image folder with a metadata file (``metadata.jsonl``, ``metadata.csv`` or ``metadata.parquet`` with a
  ``file_name`` column, as the ``datasets`` ``imagefolder`` builder reads it; ``FOLDER:SPLIT`` picks a split
  when the folder has split subfolders).

A plain folder of images (no metadata file) is not a dataset spec: the metrics' folder reader handles it.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from difflens.errors import DifflensError

HF_PREFIX = "hf:"
STATE_FILE = "state.json"
DICT_FILE = "dataset_dict.json"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
KINDS = ("hf", "parquet", "arrow", "imagefolder", "folder")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec. ``fields`` are the raw CONFIG/SPLIT fields of an ``hf:`` spec (resolved
    later, against the dataset); ``split`` is set for local specs with ``:SPLIT``."""

    kind: str
    text: str
    name: str | None = None
    revision: str | None = None
    fields: tuple[str, ...] = ()
    path: Path | None = None
    files: tuple[Path, ...] = ()
    split: str | None = None


def _is_arrow_folder(path: Path) -> bool:
    return path.is_dir() and ((path / STATE_FILE).is_file() or (path / DICT_FILE).is_file())


def metadata_file(path: Path) -> Path | None:
    """The imagefolder metadata file in ``path`` or in one of its split subfolders."""
    if not path.is_dir():
        return None
    for name in METADATA_FILES:
        if (path / name).is_file():
            return path / name
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in METADATA_FILES:
            if (sub / name).is_file():
                return sub / name
    return None


def _parquet_files(text: str) -> list[Path]:
    path = Path(text).expanduser()
    if any(ch in text for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if p.endswith(".parquet"))
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    if path.is_dir() and not _is_arrow_folder(path) and metadata_file(path) is None:
        return sorted(path.glob("*.parquet"))
    return []


def _local_kind(path: Path) -> str | None:
    if _is_arrow_folder(path):
        return "arrow"
    if metadata_file(path) is not None:
        return "imagefolder"
    if _parquet_files(str(path)):
        return "parquet"
    return None


def is_dataset_spec(spec: str) -> bool:
    """True for ``hf:...``, parquet files/globs/folders, ``save_to_disk`` folders and image folders with a
    metadata file (each optionally followed by ``:SPLIT``); False for plain image folders, arrays, stats."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        return True
    if spec.endswith(".parquet") and any(ch in spec for ch in "*?["):
        return True
    path = Path(spec).expanduser()
    if path.exists():
        return _local_kind(path) is not None
    if ":" in spec:
        base = Path(spec.rsplit(":", 1)[0]).expanduser()
        return base.exists() and _local_kind(base) in ("arrow", "imagefolder")
    return False


def parse_spec(spec: str, allow_folder: bool = False) -> DatasetSpec:
    """Parse a dataset spec (see the module docstring); raises :class:`DifflensError` when it is none.
    With ``allow_folder`` a plain folder of images is accepted too (kind ``folder``, one column ``image``)."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        parts = text[len(HF_PREFIX):].split(":")
        name, revision = parts[0], None
        if "@" in name:
            name, revision = name.split("@", 1)
        if not name or not _NAME_RE.match(name) or len(parts) > 3 or any(not p for p in parts[1:]) \
                or revision == "":
            raise DifflensError(f"{text!r} is not a valid dataset spec.",
                                "write hf:NAME[@REVISION][:CONFIG][:SPLIT], e.g. "
                                "hf:user/coco-captions:validation")
        return DatasetSpec("hf", text, name=name, revision=revision, fields=tuple(parts[1:]))
    if text.endswith(".parquet") and any(ch in text for ch in "*?["):
        files = _parquet_files(text)
        if not files:
            raise DifflensError(f"no parquet file matches {text}.", "check the pattern")
        return DatasetSpec("parquet", text, path=Path(text).expanduser(), files=tuple(files))
    path = Path(text).expanduser()
    split = None
    if not path.exists() and ":" in text:
        base, split = text.rsplit(":", 1)
        path = Path(base).expanduser()
        if not split or not path.exists() or _local_kind(path) not in ("arrow", "imagefolder"):
            path, split = Path(text).expanduser(), None
    if not path.exists():
        raise DifflensError(f"dataset {text} does not exist.",
                            "pass hf:NAME[:CONFIG][:SPLIT], a .parquet file, a save_to_disk folder or an "
                            "image folder with metadata.jsonl/metadata.csv")
    kind = _local_kind(path)
    if kind is None and allow_folder and path.is_dir() and split is None:
        kind = "folder"
    if kind is None:
        raise DifflensError(f"{text} is not a dataset (no parquet file, no save_to_disk files, no "
                            f"{'/'.join(METADATA_FILES)}).",
                            "a plain image folder is read as images directly; pass it where a folder of "
                            "images is accepted")
    files = tuple(_parquet_files(str(path))) if kind == "parquet" else ()
    return DatasetSpec(kind, text, path=path.resolve(), files=files, split=split)
