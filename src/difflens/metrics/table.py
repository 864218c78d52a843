"""Terminal rendering of a metrics result: a rich table on stdout, then the warnings.

A warning about random-init or non-standard Inception weights is printed first, in a red panel, because it
changes how every number must be read.
"""

from __future__ import annotations

from typing import Any

LABELS = {"fid": "FID", "kid": "KID", "is": "IS", "precision": "precision", "recall": "recall",
          "density": "density", "coverage": "coverage", "clip_score": "CLIP score", "cmmd": "CMMD",
          "fd_dinov2": "FD-DINOv2"}
ORDER = ("fid", "kid", "is", "precision", "recall", "density", "coverage", "clip_score", "cmmd", "fd_dinov2")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _spread(key: str, entry: dict[str, Any]) -> str:
    parts = []
    if "std" in entry:
        what = "std over subsets" if key == "kid" else "std over splits"
        parts.append(f"± {_fmt(entry['std'])} ({what})" if entry["std"] is not None else
                     f"{what}: undefined (see warnings)")
    if "ci95" in entry:
        lo, hi = entry["ci95"]
        parts.append(f"95% CI [{_fmt(lo)}, {_fmt(hi)}]")
    return "  ".join(parts)


def is_weights_warning(text: str) -> bool:
    return text.startswith("RANDOM-INIT") or text.startswith("Inception weights ")


def render(result: dict[str, Any], console: Any | None = None) -> None:
    """Print ``result`` (as returned by :func:`difflens.metrics.api.compute_metrics`)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    out = console or Console()
    warnings = list(result.get("warnings", []))
    for w in [w for w in warnings if is_weights_warning(w)]:
        out.print(Panel(escape(w), title="WARNING", border_style="bold red", style="bold red"))
    metrics = result.get("metrics", {})
    proto = result.get("protocol", {})
    if metrics:
        table = Table(title="difflens metrics", title_justify="left")
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")
        table.add_column("spread")
        for key in [*(k for k in ORDER if k in metrics), *(k for k in metrics if k not in ORDER)]:
            entry = metrics[key]  # the known metrics first, then every other registered metric's keys
            if isinstance(entry, dict):
                table.add_row(LABELS.get(key, key), _fmt(entry.get("value")), _spread(key, entry))
        out.print(table)
    sha = proto.get("weights_sha256")
    line = f"n_real={_fmt(result.get('n_real'))}  n_fake={_fmt(result.get('n_fake'))}  "
    if proto.get("protocol", "none") != "none":
        line += f"protocol={proto.get('protocol')}  weights={sha[:12] + '...' if sha else 'n/a'}"
        if "weights_standard" in proto:
            line += " (published TF 2015-12-05)" if proto["weights_standard"] else " (NOT the published file)"
    embedding = proto.get("embedding") or {}
    if embedding:
        line += "  " * (proto.get("protocol", "none") != "none") + "  ".join(
            f"{LABELS.get(k, k)}: {e.get('model')} ({e.get('protocol')})" for k, e in embedding.items())
    out.print(escape(line), highlight=False)
    if result.get("per_prompt"):
        from difflens.metrics.clip import render_per_prompt

        render_per_prompt(result["per_prompt"], console=out)
    for w in warnings:
        if not is_weights_warning(w):
            out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
