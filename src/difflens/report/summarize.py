"""Turn each mode's result files into the rows the report shows: headline numbers and checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from difflens.report.collect import ModeData, RunData


@dataclass(frozen=True)
class Check:
    source: str
    name: str
    ok: bool
    message: str


@dataclass(frozen=True)
class Headline:
    name: str
    value: str
    detail: str = ""


def fmt_number(value: Any, digits: int = 4) -> str:
    """Readable number: 4 significant digits, `n/a` for missing or non-finite."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return str(value)


def metric_rows(mode: ModeData) -> list[Headline]:
    """One row per metric: value, and the interval or std when present."""
    rows: list[Headline] = []
    for content in mode.results.values():
        metrics = content.get("metrics") if isinstance(content, dict) else None
        if not isinstance(metrics, dict):
            continue
        for name, entry in metrics.items():
            if not isinstance(entry, dict):
                continue
            detail = ""
            if entry.get("ci95"):
                lo, hi = entry["ci95"]
                detail = f"95% CI [{fmt_number(lo)}, {fmt_number(hi)}]"
            elif entry.get("std") is not None:
                detail = f"± {fmt_number(entry['std'])} (std)"
            rows.append(Headline(name, fmt_number(entry.get("value")), detail))
    return rows


def per_prompt_tables(mode: ModeData, limit: int = 20) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, rows of (prompt, images, mean score)) for each metric entry that carries a per-prompt table
    (the per-image scores: hpsv2, pickscore, imagereward), lowest mean first, at most ``limit`` rows."""
    out: list[tuple[str, list[tuple[str, str, str]]]] = []
    for content in mode.results.values():
        metrics = content.get("metrics") if isinstance(content, dict) else None
        for name, entry in (metrics or {}).items():
            table = entry.get("per_prompt") if isinstance(entry, dict) else None
            if not isinstance(table, dict) or not table:
                continue
            rows = sorted(((str(p), v) for p, v in table.items() if isinstance(v, dict)),
                          key=lambda r: (r[1].get("mean") is None, r[1].get("mean") or 0.0))
            out.append((name, [(p, str(v.get("count", "")), fmt_number(v.get("mean")))
                               for p, v in rows[:limit]]))
    return out


def collect_checks(mode: ModeData) -> list[Check]:
    """Every `checks` list found in the mode's JSON files (schedule checks, attention invariants...)."""
    found: list[Check] = []

    def walk(node: Any, source: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "checks" and isinstance(value, list):
                    for item in value:
                        if isinstance(item, dict) and "ok" in item:
                            found.append(Check(source, str(item.get("name", "?")), bool(item["ok"]),
                                               str(item.get("message", ""))))
                else:
                    walk(value, source if key == "schedules" else (f"{source} / {key}" if source else key))
        elif isinstance(node, list):
            for item in node:
                walk(item, source)

    for path, content in mode.results.items():
        stem = path.rsplit(".", 1)[0]
        # a mode's main result file (schedule/schedule.json) needs no prefix; others name their file
        walk(content, "" if stem == mode.name else stem)
    found = [Check(c.source or mode.name, c.name, c.ok, c.message) for c in found]
    return found


def ood_rows(mode: ModeData) -> list[tuple[str, str, str, str]]:
    rows = []
    for content in mode.results.values():
        if isinstance(content, dict) and isinstance(content.get("methods"), dict):
            for method, entry in content["methods"].items():
                if isinstance(entry, dict):
                    rows.append((method, fmt_number(entry.get("auroc")), fmt_number(entry.get("aupr")),
                                 fmt_number(entry.get("fpr95"))))
    return rows


def smoothness_rows(mode: ModeData) -> list[Headline]:
    rows = []
    for path, content in mode.results.items():
        if isinstance(content, dict) and isinstance(content.get("smoothness"), dict):
            for key, value in content["smoothness"].items():
                rows.append(Headline(f"{path.split('/')[0]}: {key}", fmt_number(value)))
    return rows


def headlines(run: RunData) -> list[Headline]:
    """The numbers at the top of the report."""
    out: list[Headline] = []
    if "metrics" in run.modes:
        out += metric_rows(run.modes["metrics"])
    if "latent" in run.modes:
        for method, auroc, _, _ in ood_rows(run.modes["latent"]):
            out.append(Headline(f"OOD AUROC ({method})", auroc))
    return out


def failed_checks(run: RunData) -> list[Check]:
    return [c for mode in run.modes.values() for c in collect_checks(mode) if not c.ok]


@dataclass(frozen=True)
class CheckMatrix:
    """Checks as a table: one row per check name, one column per source (e.g. per schedule)."""

    names: list[str]
    sources: list[str]
    cells: dict[tuple[str, str], Check]


def check_matrix(checks: list[Check]) -> CheckMatrix | None:
    """A compact matrix when several sources share check names; None when a plain list reads better."""
    sources = list(dict.fromkeys(c.source for c in checks))
    if len(sources) < 2:
        return None
    names = list(dict.fromkeys(c.name for c in checks))
    return CheckMatrix(names, sources, {(c.name, c.source): c for c in checks})


@dataclass(frozen=True)
class FaithfulnessTable:
    """One `difflens attention score` record: where it came from and one row per word (and overall)."""

    source: str
    what: str
    #: name, n, mIoU@0.4, best mIoU @ threshold, pointing, AUROC
    rows: list[tuple[str, str, str, str, str, str]]


def faithfulness_tables(mode: ModeData) -> list[FaithfulnessTable]:
    """Every attention-score record (``"mode": "attention_score"``) among the mode's JSON files."""
    tables = []
    for path, content in mode.results.items():
        if not (isinstance(content, dict) and content.get("mode") == "attention_score"):
            continue
        demo = content.get("demo") or {}
        what = (f"{len(content.get('runs', []))} run(s) scored against their masks"
                + (f"; noise levels {demo['noise_levels']}" if demo.get("noise_levels") else ""))

        def row(name: str, s: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
            best = f"{fmt_number(s.get('best_miou'), 3)} @ {fmt_number(s.get('best_threshold'), 2)}"
            return (name, fmt_number(s.get("n")), fmt_number(s.get("miou"), 3), best,
                    fmt_number(s.get("pointing"), 3), fmt_number(s.get("auroc"), 3))

        rows = [row("overall", content.get("overall") or {})]
        rows += [row(w, s) for w, s in (content.get("per_word") or {}).items() if isinstance(s, dict)]
        tables.append(FaithfulnessTable(path, what, rows))
    return tables
