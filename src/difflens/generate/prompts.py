"""Prompt files: plain text (one prompt a line), JSON lines or CSV with a ``prompt`` column.

Prompts are cycled to reach the number of samples: sample ``i`` uses ``prompts[i % len(prompts)]``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from difflens.errors import DifflensError

PROMPT_COLUMN = "prompt"


def load_prompts(path: str | Path) -> list[str]:
    """Read prompts from ``path``.

    ``.txt`` (or any other suffix): one prompt a line, blank lines skipped, surrounding whitespace removed.
    ``.jsonl``: one JSON object a line with a ``prompt`` key. ``.csv``: a header row with a ``prompt``
    column (case-insensitive). An empty file, or one without any prompt, is an error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DifflensError(f"prompts file {path} does not exist.", "pass a text file with one prompt a line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DifflensError(f"prompts file {path} is not UTF-8 text ({exc.reason}).",
                            "save the prompts file as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = _from_jsonl(path, text)
    elif suffix == ".csv":
        prompts = _from_csv(path, text)
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise DifflensError(f"prompts file {path} holds no prompt.",
                            "write one prompt a line (or a 'prompt' column for .jsonl/.csv)")
    return prompts


def _from_jsonl(path: Path, text: str) -> list[str]:
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DifflensError(f"{path} line {lineno} is not valid JSON ({exc.msg}).",
                                "write one JSON object a line, e.g. {\"prompt\": \"a red car\"}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(PROMPT_COLUMN), str):
            raise DifflensError(f"{path} line {lineno} has no string 'prompt' field.",
                                "write one JSON object a line, e.g. {\"prompt\": \"a red car\"}")
        out.append(obj[PROMPT_COLUMN].strip())
    return out


def _from_csv(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(text.splitlines())
    fields = {name.strip().lower(): name for name in (reader.fieldnames or []) if name}
    if PROMPT_COLUMN not in fields:
        found = ", ".join(reader.fieldnames or []) or "none"
        raise DifflensError(f"{path} has no 'prompt' column (columns: {found}).",
                            "add a header row with a column named 'prompt'")
    column = fields[PROMPT_COLUMN]
    return [(row.get(column) or "").strip() for row in reader]


def cycle_prompts(prompts: list[str], n: int) -> list[str]:
    """The prompt of each of ``n`` samples: ``prompts[i % len(prompts)]``."""
    if not prompts:
        raise DifflensError("no prompts were given.", "pass a prompts file with at least one prompt")
    return [prompts[i % len(prompts)] for i in range(n)]


def prompts_digest(prompts: list[str]) -> str:
    """SHA-256 of the prompt list (order matters: it decides which prompt each index gets)."""
    h = hashlib.sha256()
    for p in prompts:
        data = p.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
