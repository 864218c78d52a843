"""Render one or several run folders into a single self-contained HTML page (images inlined as
base64, no scripts or styles fetched from the network, print-friendly)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from difflens.atomic import write_text
from difflens.report.collect import RunData, load_run
from difflens.report.comparison import comparison_context
from difflens.report.summarize import (
    check_matrix,
    collect_checks,
    failed_checks,
    faithfulness_tables,
    fmt_number,
    headlines,
    metric_rows,
    ood_rows,
    per_prompt_tables,
    smoothness_rows,
)
from difflens.versions import collect_versions


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlaid_schedules(runs: list[RunData]) -> str | None:
    """log-SNR vs normalized training time for every schedule of every run, on one axis."""
    curves = []
    for run in runs:
        mode = run.modes.get("schedule")
        if mode is None:
            continue
        for content in mode.results.values():
            for label, sched in (content.get("schedules") or {}).items() if isinstance(content, dict) else []:
                lam = (sched.get("train") or {}).get("log_snr")
                if lam:
                    curves.append((f"{run.label}: {label}", lam))
    if len(curves) < 1:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for name, lam in curves:
        y = np.array([np.nan if v is None else v for v in lam], dtype=float)
        ax.plot(np.linspace(0, 1, len(y)), y, label=name)
    ax.set_xlabel("normalized training time t/T")
    ax.set_ylabel("log-SNR λ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Noise schedules on one log-SNR axis")
    return _figure_uri(fig)


def comparison_table(runs: list[RunData]) -> dict[str, Any]:
    """Metric name -> one cell per run (value and interval)."""
    names: list[str] = []
    cells: dict[str, dict[str, str]] = {}
    for run in runs:
        mode = run.modes.get("metrics")
        for row in metric_rows(mode) if mode else []:
            if row.name not in names:
                names.append(row.name)
            cells.setdefault(row.name, {})[run.label] = f"{row.value} {row.detail}".strip()
    return {"names": names, "labels": [r.label for r in runs], "cells": cells}


def build_context(runs: list[RunData]) -> dict[str, Any]:
    sections = []
    for run in runs:
        modes = []
        for name, mode in run.modes.items():
            modes.append({
                "name": name,
                "status": mode.status,
                "error": mode.error,
                "seconds": fmt_number(mode.seconds, 3) if mode.seconds is not None else None,
                "metrics": metric_rows(mode) if name == "metrics" else [],
                "per_prompt": per_prompt_tables(mode) if name == "metrics" else [],
                "checks": collect_checks(mode),
                "matrix": check_matrix(collect_checks(mode)),
                "ood": ood_rows(mode) if name == "latent" else [],
                "faithfulness": faithfulness_tables(mode) if name == "attention" else [],
                "smoothness": smoothness_rows(mode) if name == "latent" else [],
                "images": [{"uri": data_uri(p), "caption": str(p.relative_to(run.path / name))}
                           for p in mode.images],
            })
        sections.append({
            "label": run.label,
            "path": str(run.path),
            "headlines": headlines(run),
            "failed": failed_checks(run),
            "errors": [(n, m.error) for n, m in run.modes.items() if m.status == "error"],
            "notes": run.info.get("notes", []),
            "modes": modes,
            "config_json": json.dumps(run.info.get("config", {}), indent=2, sort_keys=True),
            "versions": run.info.get("versions", {}),
            "fingerprints_json": json.dumps(run.info.get("fingerprints", {}), indent=2, sort_keys=True),
        })
    return {
        "title": "difflens report: " + ", ".join(r.label for r in runs),
        "runs": sections,
        "multi": len(runs) > 1,
        "comparison": comparison_table(runs) if len(runs) > 1 else None,
        "schedule_overlay": overlaid_schedules(runs) if len(runs) > 1 else None,
        "paired": [comparison_context(c) for run in runs for c in run.comparisons],
        "generator_versions": collect_versions(),
    }


def render_html(runs: list[RunData]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("difflens.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**build_context(runs))


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Build the report for one or several runs; default output RUN_DIR/report.html of the first run."""
    runs = [load_run(d) for d in run_dirs]
    dest = Path(out) if out is not None else runs[0].path / "report.html"
    write_text(dest, render_html(runs))
    return dest
