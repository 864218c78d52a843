"""The generation folder: ``manifest.jsonl`` (one line per finished sample) and ``generation.json`` (the
run settings).

A sample is finished once its PNG was renamed into place *and* its manifest line was appended and
fsync'ed. A kill can leave at most a PNG without a line (regenerated on resume, same pixels) or a torn
last line (dropped on resume; left out with a warning when the folder is evaluated, see
:mod:`difflens.generate.pairs`); it never leaves a half-written PNG (atomic rename).

The run settings file makes a folder belong to one set of settings: a rerun with other settings into the
same folder is refused, because its samples would not be comparable with the ones already there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from difflens.atomic import write_json, write_text
from difflens.errors import DifflensError

MANIFEST_NAME = "manifest.jsonl"
SETTINGS_NAME = "generation.json"
SUMMARY_NAME = "summary.json"
IMAGES_DIR = "images"
FORMAT_VERSION = 1

#: Flags a sample can carry; flagged samples are kept on disk but excluded from metrics.
FLAG_NAN = "nan"
FLAG_BLACK = "black"
FLAG_NSFW = "nsfw"


@dataclass(frozen=True)
class RunSettings:
    """Everything that changes the pixels of sample ``i``; two runs into one folder must agree on all of it.

    ``num_samples`` and the batch size are not part of it: a rerun may extend a run, and each sample has
    its own generator, so batching does not change which noise a sample starts from.
    """

    model: str
    pipeline: str
    scheduler: str
    scheduler_config: str
    steps: int
    guidance: float
    height: int
    width: int
    negative_prompt: str | None
    seed: int
    seed_scheme: str
    dtype: str
    prompts_digest: str
    num_prompts: int
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: RunSettings) -> list[str]:
        """Names of the settings that differ, with both values."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {_short(a)} -> {_short(b)}")
        return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ManifestEntry:
    """One finished sample. ``file`` is relative to the generation folder.

    ``batch_size`` is the size of the pipeline call that made it: a call of that size (the sample repeated)
    reproduces its pixels exactly; a call with the sample alone reproduces them exactly when it is 1, and
    to float rounding otherwise (batched kernels sum in another order).
    """

    index: int
    prompt: str
    seed: int
    file: str
    model: str
    scheduler: str
    steps: int
    guidance: float
    height: int
    width: int
    negative_prompt: str | None = None
    dtype: str = "float32"
    batch_size: int = 1
    flags: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        data = asdict(self)
        data["flags"] = list(self.flags)
        return json.dumps(data, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["flags"] = tuple(kwargs.get("flags") or ())
        return cls(**kwargs)

    @property
    def valid(self) -> bool:
        """False for NaN, all-black or safety-blacked samples (kept on disk, left out of metrics)."""
        return not self.flags


def image_file(index: int) -> str:
    """Relative path of sample ``index``'s PNG."""
    return f"{IMAGES_DIR}/{index:06d}.png"


def read_manifest(out_dir: str | Path) -> tuple[dict[int, ManifestEntry], int]:
    """Entries by index (last line wins) and the number of unreadable lines (a torn tail after a kill).

    This is generate's own, lenient reading for resuming: unreadable lines are counted, their samples are
    regenerated and the manifest is rewritten. Evaluating a folder reads it strictly instead
    (:mod:`difflens.generate.pairs`): any unreadable line is an error naming it, except this torn last line
    of a generate folder, which is left out with a warning."""
    path = Path(out_dir) / MANIFEST_NAME
    entries: dict[int, ManifestEntry] = {}
    bad = 0
    if not path.is_file():
        return entries, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                bad += 1  # torn last line: written partly before a kill or a full disk
                continue
            if not line.strip():
                continue
            try:
                entry = ManifestEntry.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError):
                bad += 1
                continue
            entries[entry.index] = entry
    return entries, bad


def finished_entries(out_dir: str | Path) -> dict[int, ManifestEntry]:
    """Manifest entries whose PNG exists and is not empty (the samples a resume can skip)."""
    out_dir = Path(out_dir)
    entries, _ = read_manifest(out_dir)
    return {i: e for i, e in entries.items() if _nonempty(out_dir / e.file)}


def read_samples(out_dir: str | Path, include_flagged: bool = False) -> list[ManifestEntry]:
    """The finished samples of a generation folder, sorted by index.

    Flagged samples (NaN, all-black, safety-blacked) are left out unless ``include_flagged``; count them
    with ``len(read_samples(d, True)) - len(read_samples(d))``.
    """
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST_NAME).is_file():
        raise DifflensError(f"{out_dir} has no {MANIFEST_NAME}.",
                            "pass a folder written by difflens generate")
    entries = finished_entries(out_dir)
    return [entries[i] for i in sorted(entries) if include_flagged or entries[i].valid]


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def append_entry(out_dir: str | Path, entry: ManifestEntry) -> None:
    """Append one line and fsync it, so a finished sample survives a crash or power loss."""
    path = Path(out_dir) / MANIFEST_NAME
    with open(path, "a", encoding="utf-8") as f:
        f.write(entry.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def rewrite_manifest(out_dir: str | Path, entries: dict[int, ManifestEntry]) -> None:
    """Atomically replace the manifest with ``entries`` sorted by index (drops torn and duplicate lines)."""
    lines = "".join(entries[i].to_json() + "\n" for i in sorted(entries))
    write_text(Path(out_dir) / MANIFEST_NAME, lines)


def read_settings(out_dir: str | Path) -> RunSettings | None:
    path = Path(out_dir) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunSettings.from_dict(data["settings"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DifflensError(f"{path} is unreadable ({exc}).",
                            "generate into a new folder, or delete the broken folder") from None


def check_folder(out_dir: str | Path, settings: RunSettings) -> bool:
    """Refuse a folder made with other settings or holding foreign files. Returns True when resuming.

    Writes nothing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DifflensError(f"--out {out_dir} is a file.", "pass a folder path")
    old = read_settings(out_dir)
    if old is None:
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise DifflensError(f"--out {out_dir} is not empty and was not made by difflens generate.",
                                "pass a new or empty folder")
        return False
    diffs = old.differences(settings)
    if diffs:
        raise DifflensError(
            f"{out_dir} holds samples made with other settings ({'; '.join(diffs)}).",
            "rerun with the original settings to resume, or pass a new --out folder")
    return True


def write_settings(out_dir: str | Path, settings: RunSettings, versions: dict[str, Any]) -> None:
    write_json(Path(out_dir) / SETTINGS_NAME, {"settings": settings.to_dict(), "versions": versions})
