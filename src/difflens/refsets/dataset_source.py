"""Images (and captions) from datasets: Hugging Face hub datasets and local dataset files.

Specs (see :func:`parse_spec`):

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

Rows are read in ascending row order. ``num`` with ``subset_seed`` selects a reproducible subset
(:mod:`difflens.refsets.subset`); ``reference_size`` resizes and center-crops every image
(:mod:`difflens.refsets.preprocess`). Images are decoded by difflens, not by ``datasets``, with the metrics'
to-RGB rule (:mod:`difflens.metrics.images`): an image that fails to decode is skipped, counted and
reported in :attr:`ImageSource.warnings` (or an error with ``strict``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.refsets.preprocess import ReferencePreprocess
from difflens.refsets.subset import Subset, draw_subset

HF_PREFIX = "hf:"
STATE_FILE = "state.json"
DICT_FILE = "dataset_dict.json"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
KINDS = ("hf", "parquet", "arrow", "imagefolder", "folder")
FOLDER_IMAGE_COLUMN = "image"
_READ_BATCH = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# --------------------------------------------------------------------------------------------- parsing

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


def _metadata_file(path: Path) -> Path | None:
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
    if path.is_dir() and not _is_arrow_folder(path) and _metadata_file(path) is None:
        return sorted(path.glob("*.parquet"))
    return []


def _local_kind(path: Path) -> str | None:
    if _is_arrow_folder(path):
        return "arrow"
    if _metadata_file(path) is not None:
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


# --------------------------------------------------------------------------------- the datasets library

@contextlib.contextmanager
def datasets_env(offline: bool) -> Iterator[None]:
    """Quiet ``datasets`` (no progress bars, errors only) and, when ``offline``, forbid hub access; restored
    on exit. The library reads HF_HUB_OFFLINE at import, so the module flags are switched here."""
    import datasets
    import huggingface_hub.constants as hub_constants
    from datasets.utils import logging as ds_logging
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, ds_logging.get_verbosity(),
             are_progress_bars_disabled())
    if offline:
        datasets.config.HF_HUB_OFFLINE = True
        hub_constants.HF_HUB_OFFLINE = True
    ds_logging.set_verbosity_error()
    disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[0], saved[1]
        ds_logging.set_verbosity(saved[2])
        if not saved[3]:
            enable_progress_bars()


def hf_cache_paths(name: str) -> tuple[Path, Path]:
    """Where ``datasets`` keeps a hub dataset: (prepared Arrow data, raw hub files)."""
    import datasets
    import huggingface_hub.constants as hub_constants
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    prepared = Path(str(datasets.config.HF_DATASETS_CACHE)).expanduser() / "___".join(parts)
    raw = Path(hub_constants.HF_HUB_CACHE).expanduser() / ("datasets--" + name.replace("/", "--"))
    return prepared, raw


def _offline_flag(offline: bool) -> bool:
    from difflens.models import is_offline

    return is_offline(offline)


def _not_cached(name: str, offline: bool, detail: str) -> DifflensError:
    prepared, raw = hf_cache_paths(name)
    why = "--offline forbids downloading it" if offline else f"the hub could not be reached ({detail})"
    return DifflensError(
        f"dataset {name!r} is not in the local cache and {why}; looked for it in {prepared} "
        f"(HF_DATASETS_CACHE, default $HF_HOME/datasets; raw hub files would be in {raw}).",
        f"run once online: python -c \"import datasets; datasets.load_dataset('{name}')\", "
        "or set HF_DATASETS_CACHE/HF_HOME to the cache that holds it")


def _load_builder(name: str, config: str | None, revision: str | None, offline: bool) -> Any:
    """``datasets.load_dataset_builder`` with the library's errors turned into one clear message."""
    from datasets import load_dataset_builder
    from datasets.exceptions import DatasetNotFoundError

    try:
        return load_dataset_builder(name, config, revision=revision)
    except DatasetNotFoundError as exc:
        raise DifflensError(f"dataset {name!r} was not found: {_first_line(exc)}",
                            "check the name (owner/name) on huggingface.co/datasets and your access to it") \
            from None
    except ConnectionError as exc:
        raise _not_cached(name, offline, _first_line(exc)) from None
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if "Couldn't find cache" in msg and "Available configs" not in msg:
            raise _not_cached(name, offline, msg) from None
        if "BuilderConfig" in msg or "Config name is missing" in msg or "Available configs" in msg \
                or "config" in msg.lower():
            raise DifflensError(f"dataset {name!r}: config {config!r} is not available ({msg}).",
                                "name one of the available configs: hf:NAME:CONFIG:SPLIT") from None
        raise DifflensError(f"dataset {name!r} could not be loaded: {msg}",
                            "check the dataset spec") from None
    except FileNotFoundError as exc:
        raise DifflensError(f"dataset {name!r} could not be found: {_first_line(exc)}",
                            "check the name, or pass a local dataset file") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _builder_splits(builder: Any) -> list[str]:
    splits = getattr(builder.info, "splits", None)
    if splits:
        return list(splits.keys())
    data_files = getattr(builder.config, "data_files", None)
    return list(data_files.keys()) if data_files else []


def _pick_split(split: str | None, available: list[str], label: str, example: str) -> str:
    if split is not None:
        if available and split not in available:
            raise DifflensError(f"{label} has no split {split!r}; available splits: {', '.join(available)}.",
                                f"name one of them, e.g. {example}{available[0]}")
        return split
    if len(available) == 1:
        return available[0]
    if not available:
        raise DifflensError(f"{label} lists no split.", "name the split explicitly")
    raise DifflensError(f"{label} has several splits ({', '.join(available)}); the spec must name one.",
                        f"e.g. {example}{available[0]}")


def _guarded(items: Iterator[Any], offline: bool) -> Iterator[Any]:
    """Advance ``items`` inside :func:`datasets_env`, one step at a time: the library's global switches are
    never left changed while a consumer holds a suspended generator."""
    while True:
        with datasets_env(offline):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


# ----------------------------------------------------------------------------------------- row tables

class _Table:
    """Rows of one split: column names, the row count, and values of one column at given rows."""

    num_rows: int | None
    features: dict[str, Any]
    base_dir: Path | None = None

    def iter_values(self, column: str, rows: Any) -> Iterator[tuple[int, Any]]:  # pragma: no cover
        raise NotImplementedError

    def values(self, column: str, rows: Any) -> list[Any]:
        return [v for _, v in self.iter_values(column, rows)]


def _undecoded(ds: Any, column: str) -> Any:
    """``ds`` restricted to ``column``, with image decoding off (difflens decodes, counting failures)."""
    from datasets import Image

    ds = ds.select_columns([column])
    feature = ds.features.get(column) if ds.features else None
    if isinstance(feature, Image) and feature.decode:
        ds = ds.cast_column(column, Image(decode=False))
    return ds


class _MapTable(_Table):
    """A memory-mapped ``datasets.Dataset`` (random access)."""

    def __init__(self, ds: Any, base_dir: Path | None = None) -> None:
        self.ds = ds
        self.num_rows = len(ds)
        self.features = dict(ds.features)
        self.base_dir = base_dir

    def iter_values(self, column: str, rows: Any) -> Iterator[tuple[int, Any]]:
        sub = _undecoded(self.ds, column)
        if len(rows) != self.num_rows:
            sub = sub.select(rows)
        pos = 0
        for batch in sub.iter(batch_size=_READ_BATCH):
            for value in batch[column]:
                yield int(rows[pos]), value
                pos += 1


class _StreamTable(_Table):
    """A streaming ``datasets.IterableDataset`` (sequential; rows not selected are skipped undecoded)."""

    def __init__(self, ds: Any, num_rows: int | None, base_dir: Path | None = None) -> None:
        self.ds = ds
        self.num_rows = num_rows
        self.features = dict(ds.features) if ds.features else {}
        self.base_dir = base_dir
        if not self.features:
            first = next(iter(ds), None)
            self.features = {k: None for k in (first or {})}

    def iter_values(self, column: str, rows: Any) -> Iterator[tuple[int, Any]]:
        if len(rows) == 0:
            return
        sub = _undecoded(self.ds, column)
        pos, want, seen = 0, int(rows[0]), 0
        for i, example in enumerate(sub):
            seen = i + 1
            if i == want:
                yield i, example[column]
                pos += 1
                if pos == len(rows):
                    return
                want = int(rows[pos])
        if pos < len(rows):
            raise DifflensError(f"the dataset ended after {seen} rows, before row "
                                f"{want} of the subset.", "the dataset changed while reading; rerun")


class _FolderTable(_Table):
    """A plain folder of image files (the metrics' listing rule), one row per file, column ``image``."""

    def __init__(self, files: list[Path], root: Path) -> None:
        self.files = files
        self.num_rows = len(files)
        self.features = {FOLDER_IMAGE_COLUMN: None}
        self.base_dir = root

    def iter_values(self, column: str, rows: Any) -> Iterator[tuple[int, Any]]:
        for row in rows:
            yield int(row), str(self.files[int(row)])


# --------------------------------------------------------------------------------------------- opening

@dataclass
class _Opened:
    table: _Table
    identity: dict[str, Any]


def _open_hf(spec: DatasetSpec, offline: bool, streaming: bool) -> _Opened:
    name = spec.name or ""
    label = f"dataset {name!r}"
    config: str | None = None
    split: str | None = None
    builder = None
    if len(spec.fields) == 2:
        config, split = spec.fields
    elif len(spec.fields) == 1:
        field_ = spec.fields[0]
        try:
            default = _load_builder(name, None, spec.revision, offline)
        except DifflensError as exc:
            if "not in the local cache" in exc.message or "was not found" in exc.message:
                raise
            default = None
        if default is not None and field_ in _builder_splits(default):
            builder, split = default, field_
        else:
            config = field_
            try:
                builder = _load_builder(name, config, spec.revision, offline)
            except DifflensError as exc:
                if "config" not in exc.message:
                    raise
                splits = ", ".join(_builder_splits(default)) if default is not None else "unknown"
                raise DifflensError(f"{label} has no split or config named {field_!r} (splits of the default "
                                    f"config: {splits}; {exc.message})",
                                    "write hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT") from None
    if builder is None:
        builder = _load_builder(name, config, spec.revision, offline)
    config = builder.config.name
    split = _pick_split(split, _builder_splits(builder), f"{label} (config {config!r})",
                        f"hf:{name}:{config}:")
    try:
        if streaming:
            ds = builder.as_streaming_dataset(split=split)
            info_splits = getattr(builder.info, "splits", None) or {}
            num = info_splits[split].num_examples if split in info_splits else None
            table: _Table = _StreamTable(ds, num or None)
        else:
            builder.download_and_prepare()
            table = _MapTable(builder.as_dataset(split=split))
    except ConnectionError as exc:
        raise _not_cached(name, offline, _first_line(exc)) from None
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise DifflensError(f"{label} (config {config!r}, split {split!r}) could not be read: "
                            f"{_first_line(exc)}",
                            "check the dataset spec, or drop --offline to download it") from None
    revision = spec.revision
    if revision is None and isinstance(builder.hash, str) and re.fullmatch(r"[0-9a-f]{40}", builder.hash):
        revision = builder.hash
    identity = {"kind": "hf", "name": name, "config": config, "split": split, "revision": revision,
                "builder_hash": builder.hash if isinstance(builder.hash, str) else None,
                "data_fingerprint": getattr(getattr(table, "ds", None), "_fingerprint", None),
                "streaming": streaming}
    return _Opened(table, identity)


def _parquet_fingerprint(files: tuple[Path, ...]) -> tuple[int, str]:
    """(total rows, SHA-256 over each file's name, size, row count and schema), from the parquet footers."""
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        total += meta.num_rows
        h.update(json.dumps([f.name, f.stat().st_size, meta.num_rows, str(meta.schema)]).encode())
    return total, h.hexdigest()


def _open_parquet(spec: DatasetSpec) -> _Opened:
    from datasets import load_dataset

    files = spec.files
    try:
        total, digest = _parquet_fingerprint(files)
        ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)
    except (OSError, ValueError) as exc:
        raise DifflensError(f"parquet dataset {spec.text} could not be read: {_first_line(exc)}",
                            "check that the file is a valid parquet file") from None
    table = _StreamTable(ds, total, base_dir=files[0].parent)
    identity = {"kind": "parquet", "path": str(spec.path.resolve() if spec.path else files[0]),
                "files": [f.name for f in files], "split": None, "data_fingerprint": digest}
    return _Opened(table, identity)


def _open_arrow(spec: DatasetSpec) -> _Opened:
    from datasets import Dataset, DatasetDict, load_from_disk

    path = spec.path
    assert path is not None
    try:
        loaded = load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DifflensError(f"{path} could not be read as a save_to_disk folder: {_first_line(exc)}",
                            "pass the folder written by Dataset.save_to_disk") from None
    split = spec.split
    if isinstance(loaded, DatasetDict):
        split = _pick_split(split, list(loaded.keys()), f"dataset {path}", f"{path}:")
        ds = loaded[split]
    else:
        if split is not None:
            raise DifflensError(f"{path} holds a single Dataset, not a DatasetDict, so it has no split "
                                f"{split!r}.", f"pass {path} without ':{split}'")
        ds = loaded
    assert isinstance(ds, Dataset)
    identity = {"kind": "arrow", "path": str(path), "split": split, "data_fingerprint": ds._fingerprint}
    return _Opened(_MapTable(ds, base_dir=path), identity)


def _open_imagefolder(spec: DatasetSpec) -> _Opened:
    from datasets import load_dataset

    path = spec.path
    assert path is not None
    meta = _metadata_file(path)
    try:
        loaded = load_dataset("imagefolder", data_dir=str(path))
    except (OSError, ValueError) as exc:
        raise DifflensError(f"image folder {path} could not be read with its metadata file: "
                            f"{_first_line(exc)}",
                            "write metadata.jsonl with a file_name column naming each image") from None
    split = _pick_split(spec.split, list(loaded.keys()), f"dataset {path}", f"{path}:")
    ds = loaded[split]
    h = hashlib.sha256()
    if meta is not None:
        h.update(meta.read_bytes())
    h.update(str(len(ds)).encode())
    identity = {"kind": "imagefolder", "path": str(path), "split": split, "data_fingerprint": h.hexdigest(),
                "metadata_file": meta.name if meta else None}
    return _Opened(_MapTable(ds, base_dir=path), identity)


def _open_folder(spec: DatasetSpec) -> _Opened:
    from difflens.metrics.images import list_image_files

    path = spec.path
    assert path is not None
    files = list_image_files(path)
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps([f.relative_to(path).as_posix(), f.stat().st_size]).encode())
    identity = {"kind": "folder", "path": str(path), "split": None, "data_fingerprint": h.hexdigest()}
    return _Opened(_FolderTable(files, path), identity)


def _open(spec: DatasetSpec, offline: bool, streaming: bool) -> _Opened:
    with datasets_env(offline):
        if spec.kind == "hf":
            return _open_hf(spec, offline, streaming)
        if spec.kind == "parquet":
            return _open_parquet(spec)
        if spec.kind == "arrow":
            return _open_arrow(spec)
        if spec.kind == "folder":
            return _open_folder(spec)
        return _open_imagefolder(spec)


def _check_column(table: _Table, column: str, role: str, flag: str, label: str) -> None:
    if column not in table.features:
        cols = ", ".join(table.features) or "none"
        raise DifflensError(f"{label} has no {role} column {column!r}; available columns: {cols}.",
                            f"pass {flag} with one of them")


def _check_image_feature(table: _Table, column: str, label: str) -> None:
    from datasets import Image, Value

    feature = table.features.get(column)
    if feature is None or isinstance(feature, Image):
        return
    if isinstance(feature, Value) and feature.dtype in ("binary", "large_binary", "string", "large_string"):
        return
    if isinstance(feature, dict) and ("bytes" in feature or "path" in feature):
        return
    raise DifflensError(f"{label}: column {column!r} holds {feature}, not images.",
                        "pass --image-column with a column of images (an Image feature, bytes or file paths)")


# ---------------------------------------------------------------------------------------------- images

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

    def __init__(self, spec: DatasetSpec, table: _Table, identity: dict[str, Any], subset: Subset,
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
        _check_column(self.table, column, "id", "--id-column", self.label)
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
                cells = _guarded(self.table.iter_values(self.image_column, self.rows), self.offline)
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
    off = _offline_flag(offline)
    opened = _open(parsed, off, streaming)
    table = opened.table
    label = f"dataset {parsed.text}"
    if image_column is not None:
        _check_column(table, image_column, "image", "--image-column", label)
        _check_image_feature(table, image_column, label)
    if caption_column is not None:
        _check_column(table, caption_column, "caption", "--caption-column", label)
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
