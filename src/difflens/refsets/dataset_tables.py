"""Rows of a dataset split, opened from a parsed spec (:mod:`difflens.refsets.dataset_spec`): a
memory-mapped ``datasets.Dataset``, a streamed parquet/hub dataset, or a plain folder of image files. Each
opened dataset carries an ``identity`` (kind, name/path, split, revision, a data fingerprint) for the
protocol record. Image cells are returned undecoded: difflens decodes them
(:mod:`difflens.refsets.dataset_source`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.refsets.dataset_spec import DatasetSpec, metadata_file
from difflens.refsets.hf_datasets import (
    builder_splits,
    datasets_env,
    first_line,
    load_builder,
    not_cached,
    pick_split,
)

FOLDER_IMAGE_COLUMN = "image"
_READ_BATCH = 64


class RowTable:
    """Rows of one split: column names, the row count, and values of one column at given rows."""

    num_rows: int | None
    features: dict[str, Any]
    base_dir: Path | None = None
    uses_datasets: bool = True  # read through the `datasets` library (its global switches apply)

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


class MapTable(RowTable):
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


class StreamTable(RowTable):
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


class FolderTable(RowTable):
    """A plain folder of image files (the metrics' listing rule), one row per file, column ``image``."""

    uses_datasets = False

    def __init__(self, files: list[Path], root: Path) -> None:
        self.files = files
        self.num_rows = len(files)
        self.features = {FOLDER_IMAGE_COLUMN: None}
        self.base_dir = root

    def iter_values(self, column: str, rows: Any) -> Iterator[tuple[int, Any]]:
        for row in rows:
            yield int(row), str(self.files[int(row)])


@dataclass
class OpenedDataset:
    table: RowTable
    identity: dict[str, Any]


def _open_hf(spec: DatasetSpec, offline: bool, streaming: bool) -> OpenedDataset:
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
            default = load_builder(name, None, spec.revision, offline)
        except DifflensError as exc:
            if "not in the local cache" in exc.message or "was not found" in exc.message:
                raise
            default = None
        if default is not None and field_ in builder_splits(default):
            builder, split = default, field_
        else:
            config = field_
            try:
                builder = load_builder(name, config, spec.revision, offline)
            except DifflensError as exc:
                if "config" not in exc.message:
                    raise
                splits = ", ".join(builder_splits(default)) if default is not None else "unknown"
                raise DifflensError(f"{label} has no split or config named {field_!r} (splits of the default "
                                    f"config: {splits}; {exc.message})",
                                    "write hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT") from None
    if builder is None:
        builder = load_builder(name, config, spec.revision, offline)
    config = builder.config.name
    split = pick_split(split, builder_splits(builder), f"{label} (config {config!r})",
                        f"hf:{name}:{config}:")
    try:
        if streaming:
            ds = builder.as_streaming_dataset(split=split)
            info_splits = getattr(builder.info, "splits", None) or {}
            num = info_splits[split].num_examples if split in info_splits else None
            table: RowTable = StreamTable(ds, num or None)
        else:
            builder.download_and_prepare()
            table = MapTable(builder.as_dataset(split=split))
    except ConnectionError as exc:
        raise not_cached(name, offline, first_line(exc)) from None
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise DifflensError(f"{label} (config {config!r}, split {split!r}) could not be read: "
                            f"{first_line(exc)}",
                            "check the dataset spec, or drop --offline to download it") from None
    revision = spec.revision
    if revision is None and isinstance(builder.hash, str) and re.fullmatch(r"[0-9a-f]{40}", builder.hash):
        revision = builder.hash
    identity = {"kind": "hf", "name": name, "config": config, "split": split, "revision": revision,
                "builder_hash": builder.hash if isinstance(builder.hash, str) else None,
                "data_fingerprint": getattr(getattr(table, "ds", None), "_fingerprint", None),
                "streaming": streaming}
    return OpenedDataset(table, identity)


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


class ParquetTable(RowTable):
    """Local parquet files read with pyarrow, one column and ``_READ_BATCH`` rows at a time (sequential;
    rows not selected are skipped undecoded). Not through ``datasets``, whose streaming reader keeps
    pyarrow's pre-buffered column chunks: memory grew with every row read (BENCHMARKS.md,
    reference-statistics memory).
    Column types come from the ``huggingface`` schema metadata that ``datasets`` writes (``{"_type":
    "Image"}``...), else from the arrow type."""

    uses_datasets = False

    def __init__(self, files: tuple[Path, ...], num_rows: int) -> None:
        import pyarrow.parquet as pq

        self.files = files
        self.num_rows = num_rows
        self.base_dir = files[0].parent
        schema = pq.read_schema(files[0])
        hf: dict[str, Any] = {}
        raw = (schema.metadata or {}).get(b"huggingface")
        if raw:
            try:
                hf = dict(json.loads(raw).get("info", {}).get("features", {}))
            except (ValueError, AttributeError):
                hf = {}
        self.features = {name: hf.get(name) or _arrow_feature(schema.field(name).type)
                         for name in schema.names}

    def iter_values(self, column: str, rows: Any) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        if len(rows) == 0:
            return
        pos, want, i = 0, int(rows[0]), 0
        for f in self.files:
            # pre_buffer=False: pyarrow's default pre-buffering keeps every column chunk read so far in
            # memory (RSS grew ~25 KB per 256 px JPEG row, 1 GB over 40k rows); without it, flat (~180 MB)
            reader = pq.ParquetFile(f, pre_buffer=False)
            for batch in reader.iter_batches(batch_size=_READ_BATCH, columns=[column]):
                if i + batch.num_rows <= want:  # nothing wanted in this batch: not even converted
                    i += batch.num_rows
                    continue
                values = batch.column(0).to_pylist()
                for value in values:
                    if i == want:
                        yield i, value
                        pos += 1
                        if pos == len(rows):
                            return
                        want = int(rows[pos])
                    i += 1
        if pos < len(rows):
            raise DifflensError(f"the dataset ended after {i} rows, before row {want} of the subset.",
                                "the dataset changed while reading; rerun")


def _arrow_feature(kind: Any) -> Any:
    """A column's type as :func:`check_image_feature` reads it, from its arrow type alone."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return {kind.field(i).name: str(kind.field(i).type) for i in range(kind.num_fields)}
    return {"_type": "Value", "dtype": str(kind)}


def _open_parquet(spec: DatasetSpec) -> OpenedDataset:
    files = spec.files
    try:
        total, digest = _parquet_fingerprint(files)
        table: RowTable = ParquetTable(files, total)
    except (OSError, ValueError) as exc:
        raise DifflensError(f"parquet dataset {spec.text} could not be read: {first_line(exc)}",
                            "check that the file is a valid parquet file") from None
    identity = {"kind": "parquet", "path": str(spec.path.resolve() if spec.path else files[0]),
                "files": [f.name for f in files], "split": None, "data_fingerprint": digest}
    return OpenedDataset(table, identity)


def _open_arrow(spec: DatasetSpec) -> OpenedDataset:
    from datasets import Dataset, DatasetDict, load_from_disk

    path = spec.path
    assert path is not None
    try:
        loaded = load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DifflensError(f"{path} could not be read as a save_to_disk folder: {first_line(exc)}",
                            "pass the folder written by Dataset.save_to_disk") from None
    split = spec.split
    if isinstance(loaded, DatasetDict):
        split = pick_split(split, list(loaded.keys()), f"dataset {path}", f"{path}:")
        ds = loaded[split]
    else:
        if split is not None:
            raise DifflensError(f"{path} holds a single Dataset, not a DatasetDict, so it has no split "
                                f"{split!r}.", f"pass {path} without ':{split}'")
        ds = loaded
    assert isinstance(ds, Dataset)
    identity = {"kind": "arrow", "path": str(path), "split": split, "data_fingerprint": ds._fingerprint}
    return OpenedDataset(MapTable(ds, base_dir=path), identity)


def _open_imagefolder(spec: DatasetSpec) -> OpenedDataset:
    from datasets import load_dataset

    path = spec.path
    assert path is not None
    meta = metadata_file(path)
    try:
        loaded = load_dataset("imagefolder", data_dir=str(path))
    except (OSError, ValueError) as exc:
        raise DifflensError(f"image folder {path} could not be read with its metadata file: "
                            f"{first_line(exc)}",
                            "write metadata.jsonl with a file_name column naming each image") from None
    split = pick_split(spec.split, list(loaded.keys()), f"dataset {path}", f"{path}:")
    ds = loaded[split]
    h = hashlib.sha256()
    if meta is not None:
        h.update(meta.read_bytes())
    h.update(str(len(ds)).encode())
    identity = {"kind": "imagefolder", "path": str(path), "split": split, "data_fingerprint": h.hexdigest(),
                "metadata_file": meta.name if meta else None}
    return OpenedDataset(MapTable(ds, base_dir=path), identity)


def _open_folder(spec: DatasetSpec) -> OpenedDataset:
    from difflens.metrics.images import list_image_files

    path = spec.path
    assert path is not None
    files = list_image_files(path)
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps([f.relative_to(path).as_posix(), f.stat().st_size]).encode())
    identity = {"kind": "folder", "path": str(path), "split": None, "data_fingerprint": h.hexdigest()}
    return OpenedDataset(FolderTable(files, path), identity)


def open_dataset(spec: DatasetSpec, offline: bool, streaming: bool) -> OpenedDataset:
    if spec.kind == "parquet":  # pyarrow only: `datasets` is not even imported (about 70 MB less RSS)
        return _open_parquet(spec)
    if spec.kind == "folder":
        return _open_folder(spec)
    with datasets_env(offline):
        if spec.kind == "hf":
            return _open_hf(spec, offline, streaming)
        if spec.kind == "arrow":
            return _open_arrow(spec)
        return _open_imagefolder(spec)


def check_column(table: RowTable, column: str, role: str, flag: str, label: str) -> None:
    if column not in table.features:
        cols = ", ".join(table.features) or "none"
        raise DifflensError(f"{label} has no {role} column {column!r}; available columns: {cols}.",
                            f"pass {flag} with one of them")


def check_image_feature(table: RowTable, column: str, label: str) -> None:
    feature = table.features.get(column)
    textual = ("binary", "large_binary", "string", "large_string")
    if isinstance(feature, dict) and (feature.get("_type") == "Image" or (  # from parquet metadata
            feature.get("_type") == "Value" and feature.get("dtype") in textual)):
        return
    from datasets import Image, Value

    if feature is None or isinstance(feature, Image):
        return
    if isinstance(feature, Value) and feature.dtype in textual:
        return
    if isinstance(feature, dict) and ("bytes" in feature or "path" in feature):
        return
    raise DifflensError(f"{label}: column {column!r} holds {feature}, not images.",
                        "pass --image-column with a column of images (an Image feature, bytes or file paths)")
