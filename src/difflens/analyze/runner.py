"""Run the chosen modes one after another, isolating failures, then write run.json and report.html.

A mode that raises is recorded with its error (and shown as an error section in the report); the other
modes still run. This is the one place that catches arbitrary exceptions, on purpose.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from rich.markup import escape

from difflens.analyze.config import AnalysisConfig, check_mode_options
from difflens.atomic import write_json
from difflens.console import console
from difflens.errors import DifflensError
from difflens.versions import collect_versions


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, DifflensError):
        return str(exc)
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_analysis(cfg: AnalysisConfig, notes: list[str] | None = None) -> Path:
    """Run every mode of `cfg`, write RUN_DIR/run.json and RUN_DIR/report.html; return the report path."""
    from difflens.analyze.modes import MODE_RUNNERS
    from difflens.report.render import write_report

    for name, options in cfg.mode_options.items():  # a typo in a table is bad input, not a failed mode
        check_mode_options(name, options)
    cfg.out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "model": cfg.model,
        "label": cfg.label or Path(cfg.model).name or cfg.model,
        "config": cfg.to_json(),
        "versions": collect_versions(),
        "notes": list(notes or []),
        "fingerprints": {},
        "modes": {},
    }
    for mode in cfg.modes:
        console.rule(f"[bold]{mode}")
        start = time.perf_counter()
        try:
            extra = MODE_RUNNERS[mode](cfg, cfg.out / mode) or {}
            entry: dict[str, Any] = {"status": "ok"}
            info["fingerprints"].update(extra.get("fingerprints", {}))
            info["notes"] += [n for n in extra.get("notes", []) if n not in info["notes"]]
        except Exception as exc:
            entry = {"status": "error", "error": _error_text(exc)}
            console.print(f"[bold red]{mode} failed:[/] {escape(entry['error'])}", highlight=False)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        info["modes"][mode] = entry
        write_json(cfg.out / "run.json", info)
    report = write_report([cfg.out])
    console.print(f"report: {report}")
    return report
