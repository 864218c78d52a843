"""Read a run folder (written by `difflens analyze`) into plain data for the report.

Layout: RUN_DIR/run.json (model, modes with status/error, config, versions, notes) and one folder per
mode with that mode's own result files (metrics/metrics.json, schedule/schedule.json,
attention/attention.json, latent/*/...json) and PNG plots; ``compare/*.json`` records that ``difflens compare
--json`` wrote into the run folder are shown as its A-vs-B comparisons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

MODES = ("metrics", "schedule", "attention", "latent")


@dataclass
class ModeData:
    """One mode of one run: its status, its JSON results and its images."""

    name: str
    status: str  # "ok" | "error" | "skipped"
    error: str | None = None
    seconds: float | None = None
    results: dict[str, Any] = field(default_factory=dict)  # relative json path -> parsed content
    images: list[Path] = field(default_factory=list)


@dataclass
class RunData:
    path: Path
    label: str
    info: dict[str, Any]
    modes: dict[str, ModeData]
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # difflens compare records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DifflensError(f"cannot read {path}: {exc}", "re-run `difflens analyze` for this run") from None


def load_run(run_dir: str | Path) -> RunData:
    """Collect everything the report shows from a run folder."""
    root = Path(run_dir)
    meta = root / "run.json"
    if not meta.is_file():
        raise DifflensError(f"{root} is not a difflens run folder (no run.json).",
                            "pass a folder written by `difflens analyze --out DIR`")
    info = _read_json(meta)
    modes: dict[str, ModeData] = {}
    for name in MODES:
        entry = info.get("modes", {}).get(name)
        if entry is None:
            continue
        data = ModeData(name=name, status=entry.get("status", "ok"), error=entry.get("error"),
                        seconds=entry.get("seconds"))
        mode_dir = root / name
        if mode_dir.is_dir():
            for path in sorted(mode_dir.rglob("*.json")):
                data.results[str(path.relative_to(mode_dir))] = _read_json(path)
            data.images = sorted(p for p in mode_dir.rglob("*.png") if _is_report_image(p))
        modes[name] = data
    label = str(info.get("label") or info.get("model") or root.name)
    found = [_read_json(p) for p in sorted((root / "compare").glob("*.json"))]
    comparisons = [c for c in found if isinstance(c, dict) and c.get("mode") == "compare"]
    return RunData(path=root, label=label, info=info, modes=modes, comparisons=comparisons)


def _is_report_image(path: Path) -> bool:
    """Plots and strips, not every generated frame (frames are in the strip already)."""
    parts = set(path.parts)
    return not ({"frames", "samples"} & parts)
