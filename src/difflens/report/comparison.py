"""The paired comparison (``difflens compare``'s record) in the report: A and B side by side per metric
(means, difference A - B, win rate of A, with their 95% intervals, and the verdict) and a per-prompt table
per metric with A's and B's mean scores next to each other."""

from __future__ import annotations

from typing import Any

from difflens.report.summarize import fmt_number


def with_interval(entry: dict[str, Any], scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    value = entry.get("value")
    if not isinstance(value, (int, float)):
        return "n/a"
    text = f"{fmt_number(value * scale, digits)}{unit}"
    ci = entry.get("ci95")
    if ci and all(isinstance(v, (int, float)) for v in ci):
        text += f" [{fmt_number(ci[0] * scale, digits)}{unit}, {fmt_number(ci[1] * scale, digits)}{unit}]"
    return text


def comparison_context(record: dict[str, Any]) -> dict[str, Any]:
    """Plain rows for the template from one comparison record (schema in :mod:`difflens.compare.api`)."""
    rows, tables = [], []
    for key, entry in (record.get("metrics") or {}).items():
        if not isinstance(entry, dict):
            continue
        wins = entry.get("wins") or {}
        rows.append({"label": entry.get("label", key), "mean_a": fmt_number(entry.get("mean_a")),
                     "mean_b": fmt_number(entry.get("mean_b")),
                     "difference": with_interval(entry.get("difference") or {}),
                     "win_rate": with_interval(entry.get("win_rate") or {}, 100.0, 3, "%"),
                     "wins": f"{wins.get('A', 0)} / {wins.get('B', 0)} / {wins.get('tie', 0)}",
                     "verdict": entry.get("verdict", "")})
        prompt_rows = [(r.get("prompt", ""), f"{fmt_number(r.get('mean_a'))} (n={r.get('n_a')})",
                        f"{fmt_number(r.get('mean_b'))} (n={r.get('n_b')})", fmt_number(r.get("difference")),
                        r.get("winner", ""))
                       for r in (record.get("per_prompt") or {}).get(key, []) if isinstance(r, dict)]
        tables.append({"label": entry.get("label", key), "rows": prompt_rows})
    settings = record.get("settings") or {}
    return {"a": (record.get("a") or {}).get("path", "A"), "b": (record.get("b") or {}).get("path", "B"),
            "n_prompts": record.get("n_prompts"), "rows": rows, "tables": tables,
            "bootstrap": settings.get("bootstrap"), "seed": settings.get("seed"),
            "ties": settings.get("ties", ""), "warnings": list(record.get("warnings") or [])}


def comparison_html(record: dict[str, Any]) -> str:
    """A self-contained page of one comparison (the report's template, with only the comparison)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from difflens.versions import collect_versions

    env = Environment(loader=PackageLoader("difflens.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    ctx = comparison_context(record)
    return env.get_template("report.html.j2").render(
        title=f"difflens comparison: {ctx['a']} vs {ctx['b']}", runs=[], multi=False, comparison=None,
        schedule_overlay=None, generator_versions=collect_versions(), paired=[ctx])
