"""Image folders with their prompts: how `difflens metrics --fake FOLDER` pairs each image with a prompt.

A folder pairs its images with prompts through the first of these files found at its top level
(:data:`PAIR_FILES`):

* ``manifest.jsonl``: one JSON object per line, as ``difflens generate`` writes it, or as any script can: only
  the image key and the caption key are needed (``{"file": "a.png", "prompt": "a cat"}``, e.g. DALL-E images
  with their prompts). Optional keys: ``index`` (when every line has one, lines are ordered by it and the
  last line of an index wins, as a resumed ``generate`` run appends) and ``flags`` (a non-empty list leaves
  the image out of the metrics and counts it, as for NaN or all-black samples).
* ``metadata.jsonl``: the same, as Hugging Face image datasets write it (``{"file_name": ..., "text": ...}``).
* ``metadata.csv``: a header line, then one row per image (``file_name,text``).

The image key is ``file`` or ``file_name`` (a path relative to the folder); the caption column is
``--caption-column`` when given, else the first of :data:`CAPTION_COLUMNS` (``prompt``, ``text``, ``caption``)
present in the first record. A line that cannot be read (not JSON, not an object, a missing key, an empty
prompt, an image that does not exist) is an error naming the file and the line, never dropped silently.

The one exception is the torn last line that an interrupted ``difflens generate`` run can leave (it writes the
PNG, then appends the line): in a folder written by ``generate`` (it holds ``generation.json``), an
unparseable last line without its newline is that sample's unfinished line. The metrics leave that sample out
with a warning; ``generate`` itself (:func:`difflens.generate.manifest.read_manifest`) drops the line and
regenerates the sample when rerun.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.generate.manifest import MANIFEST_NAME, SETTINGS_NAME

PAIR_FILES: tuple[str, ...] = (MANIFEST_NAME, "metadata.jsonl", "metadata.csv")
#: Caption columns tried in this order when ``--caption-column`` is not given.
CAPTION_COLUMNS: tuple[str, ...] = ("prompt", "text", "caption")
#: Keys naming the image file (difflens manifests: ``file``; Hugging Face metadata: ``file_name``).
IMAGE_KEYS: tuple[str, ...] = ("file", "file_name")

_FIX_LINE = "fix or remove that line"


@dataclass
class PairedFolder:
    """``files[i]`` goes with ``prompts[i]``; ``flagged`` images (a non-empty ``flags`` list) are left out."""

    folder: Path
    source: Path
    caption_column: str
    files: list[Path]
    prompts: list[str]
    flagged: int = 0
    notes: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        out = list(self.notes)
        if self.flagged:
            out.append(f"{self.folder}: {self.flagged} image(s) flagged in {self.source.name} (NaN or "
                       "all-black generated samples; see summary.json) were left out of the metrics")
        return out


def find_pair_file(folder: str | Path) -> Path | None:
    """The file that pairs ``folder``'s images with prompts (see :data:`PAIR_FILES`), or None."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        return None
    for name in PAIR_FILES:
        if (path / name).is_file():
            return path / name
    return None


@dataclass
class _Record:
    line: int
    data: dict[str, Any]


def _jsonl_records(path: Path, generated: bool) -> tuple[list[_Record], bool]:
    """Objects by line number, and whether a torn last line of a ``generate`` folder was left out."""
    raw = path.read_bytes()
    chunks = raw.split(b"\n")
    records: list[_Record] = []
    torn = False
    for number, chunk in enumerate(chunks, start=1):
        last = number == len(chunks)  # no newline after it (empty when the file ends with one)
        if not chunk.strip():
            continue
        try:
            data = json.loads(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise DifflensError(f"{path} line {number} is not UTF-8 text.", _FIX_LINE) from None
        except json.JSONDecodeError as exc:
            if last and generated:
                torn = True  # an interrupted generate run: see the module docstring
                continue
            raise DifflensError(f"{path} line {number} is not valid JSON ({exc.msg}).", _FIX_LINE) from None
        if not isinstance(data, dict):
            raise DifflensError(f"{path} line {number} is a JSON {type(data).__name__}, not an object.",
                                'write one object per line, e.g. {"file": "a.png", "prompt": "a cat"}')
        records.append(_Record(number, data))
    return records, torn


def _csv_records(path: Path) -> list[_Record]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DifflensError(f"{path} line {line} is not UTF-8 text.", _FIX_LINE) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records: list[_Record] = []
    try:
        for row in reader:
            if None in row:
                raise DifflensError(f"{path} line {reader.line_num} has more fields than the header.",
                                    _FIX_LINE + " (quote fields that contain commas)")
            if any(v is None for v in row.values()):
                raise DifflensError(f"{path} line {reader.line_num} has fewer fields than the header.",
                                    _FIX_LINE)
            if any(v.strip() for v in row.values()):
                records.append(_Record(reader.line_num, dict(row)))
    except csv.Error as exc:
        raise DifflensError(f"{path} line {reader.line_num} is not valid CSV ({exc}).", _FIX_LINE) from None
    if not reader.fieldnames:
        raise DifflensError(f"{path} is empty.", "write a header line (file_name,text) and one row per image")
    return records


def _caption_column(path: Path, first: _Record, caption_column: str | None) -> str:
    keys = ", ".join(map(str, first.data)) or "none"
    if caption_column is not None:
        if caption_column not in first.data:
            raise DifflensError(f"{path} line {first.line} has no caption column {caption_column!r} (keys: "
                                f"{keys}).", "pass --caption-column with one of those keys")
        return caption_column
    for name in CAPTION_COLUMNS:
        if name in first.data:
            return name
    raise DifflensError(f"{path} line {first.line} has no caption column ({', '.join(CAPTION_COLUMNS)}; "
                        f"keys: {keys}).", "name the prompt column prompt, or pass --caption-column NAME")


def _prompt(path: Path, rec: _Record, column: str) -> str:
    value = rec.data.get(column)
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]  # several captions per image (COCO style): the first
    if column not in rec.data:
        raise DifflensError(f"{path} line {rec.line} has no {column!r} key.", _FIX_LINE)
    if not isinstance(value, str):
        raise DifflensError(f"{path} line {rec.line}: {column!r} is a {type(value).__name__}, not text.",
                            _FIX_LINE)
    if not value.strip():
        raise DifflensError(f"{path} line {rec.line}: the {column!r} text is empty.", _FIX_LINE)
    return value.strip()


def _image(path: Path, rec: _Record, folder: Path) -> Path:
    key = next((k for k in IMAGE_KEYS if k in rec.data), None)
    if key is None:
        raise DifflensError(f"{path} line {rec.line} names no image ({' or '.join(IMAGE_KEYS)} key).",
                            _FIX_LINE)
    value = rec.data[key]
    if not isinstance(value, str) or not value.strip():
        raise DifflensError(f"{path} line {rec.line}: {key!r} is not a file name.", _FIX_LINE)
    image = folder / value.strip()
    if not image.is_file():
        raise DifflensError(f"{path} line {rec.line}: image file {image} does not exist.",
                            "fix the line, or restore the file")
    return image


def _flagged(path: Path, rec: _Record) -> bool:
    flags = rec.data.get("flags")
    if flags is None:
        return False
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise DifflensError(f"{path} line {rec.line}: 'flags' is not a list of strings.", _FIX_LINE)
    return bool(flags)


def _ordered(records: list[_Record]) -> list[_Record]:
    """By ``index`` (last line of an index wins) when every record has an integer index, else file order."""
    indices = [r.data.get("index") for r in records]
    if not records or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        return records
    by_index = {int(r.data["index"]): r for r in records}
    return [by_index[i] for i in sorted(by_index)]


def read_paired_folder(folder: str | Path, caption_column: str | None = None,
                       num_samples: int | None = None) -> PairedFolder:
    """Images and prompts of ``folder`` through its pairing file (see the module docstring); with
    ``num_samples``, only the records of index below it. Raises :class:`DifflensError` naming the file and
    line of anything unreadable."""
    from difflens.metrics.images import list_image_files

    folder = Path(folder).expanduser()
    path = find_pair_file(folder)
    if path is None:
        raise DifflensError(f"{folder} has no {', '.join(PAIR_FILES)} pairing its images with prompts.",
                            "write manifest.jsonl with one {\"file\", \"prompt\"} object per image")
    generated = path.name == MANIFEST_NAME and (folder / SETTINGS_NAME).is_file()
    notes: list[str] = []
    if path.suffix == ".csv":
        records = _csv_records(path)
    else:
        records, torn = _jsonl_records(path, generated)
        if torn:
            notes.append(f"{path}: the last line is incomplete (an interrupted difflens generate run); that "
                         "sample was left out (rerun the same generate command to finish it)")
    if not records:
        raise DifflensError(f"{path} lists no images.", "add one line per image")
    column = _caption_column(path, records[0], caption_column)
    records = _ordered(records)
    if num_samples is not None:
        records = [r for r in records
                   if isinstance(r.data.get("index"), int) and r.data["index"] < num_samples]
    files: list[Path] = []
    prompts: list[str] = []
    flagged = 0
    listed: set[Path] = set()
    for rec in records:
        image, prompt = _image(path, rec, folder), _prompt(path, rec, column)
        listed.add(image.resolve())
        if _flagged(path, rec):
            flagged += 1
            continue
        files.append(image)
        prompts.append(prompt)
    unlisted = [f for f in list_image_files(folder) if f.resolve() not in listed]
    if unlisted and num_samples is None:
        notes.append(f"{folder}: {len(unlisted)} image file(s) not listed in {path.name} were left out (e.g. "
                     f"{unlisted[0].relative_to(folder).as_posix()})")
    others = [n for n in PAIR_FILES if n != path.name and (folder / n).is_file()]
    if others:
        notes.append(f"{folder}: prompts read from {path.name}; {', '.join(others)} ignored")
    return PairedFolder(folder=folder, source=path, caption_column=column, files=files, prompts=prompts,
                        flagged=flagged, notes=notes)
