"""Where a command's result goes: a file (written atomically) or stdout when the path is ``-``.

When stdout carries JSON it carries nothing else: tables, "wrote ..." lines, progress and warnings go to
stderr (:data:`difflens.console.console`), so ``difflens metrics ... --json - | jq .`` always parses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: The path that means standard output.
STDOUT = "-"


def is_stdout(path: str | Path | None) -> bool:
    """True when ``path`` is ``-`` (standard output)."""
    return path is not None and str(path) == STDOUT


def write_result_json(dest: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``dest``: stdout for ``-``, else the file, atomically (the same text)."""
    from difflens.atomic import json_text, write_json

    if is_stdout(dest):
        sys.stdout.write(json_text(obj))
        sys.stdout.flush()
    else:
        write_json(dest, obj)

