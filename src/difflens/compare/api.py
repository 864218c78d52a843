"""``difflens compare`` as a function: two sample sets from the same prompts, scored per image, compared
prompt by prompt (:mod:`difflens.compare.core`). The record (what ``--json`` writes)::

    {"schema_version": 1, "mode": "compare",
     "a": {"path", "n_images", "n_prompts", "prompts_from"}, "b": {...}, "n_prompts": P,
     "settings": {"metrics", "bootstrap", "seed", "interval", "pairing", "ties", "batch_size",
                  ["clip_model"], ["metric_options"]},
     "metrics": {key: {"label", "verdict", "mean_a", "mean_b", "difference": {"value", ["ci95"]},
                       "win_rate": {"value", ["ci95"], "ties"}, "wins": {"A", "B", "tie"},
                       "n_prompts", "n_a", "n_b"}},
     "per_prompt": {key: [{"prompt", "n_a", "n_b", "mean_a", "mean_b", "difference", "winner"}]},
     "protocol": {key: fingerprint of the scoring model}, "versions": {...}, "warnings": [...]}

Every input is checked (folders, prompts on both sides, the same prompt set, metric names) before any
model is loaded; nothing is written by this function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflens.compare.config import CompareConfig
from difflens.errors import DifflensError

_C = CompareConfig()  # the defaults
SCHEMA_VERSION = 1
FEW_PROMPTS = 20  # below this many prompts the bootstrap interval over prompts is rough: say so


def compare(a: str | Path, b: str | Path, metrics: str, *, prompts: str | Path | None = None,
            caption_column: str | None = None, bootstrap: int = _C.bootstrap, seed: int = _C.seed,
            batch_size: int = _C.batch_size, clip_model: str = _C.clip_model,
            metric_options: dict[str, dict[str, Any]] | None = None, device: str | None = None,
            offline: bool = False, strict: bool = _C.strict) -> dict[str, Any]:
    """Compare sample folders ``a`` and ``b`` on ``metrics`` (comma list: ``clip`` and the per-image score
    metrics); returns the record of the module docstring. Raises DifflensError on bad input."""
    from difflens.compare.core import check_same_prompts, paired_comparison
    from difflens.compare.inputs import read_sample_set
    from difflens.compare.scores import choose_metrics, score_sets
    from difflens.metrics.record import _encode
    from difflens.versions import collect_versions

    cfg = CompareConfig(bootstrap=int(bootstrap), seed=int(seed), batch_size=int(batch_size),
                        clip_model=clip_model, strict=strict)
    cfg.validate()
    chosen = choose_metrics(metrics)
    prompt_list = None
    if prompts is not None:
        from difflens.generate.prompts import load_prompts

        prompt_list = load_prompts(prompts)
    side_a = read_sample_set(a, "--a", "A", prompt_list, caption_column=caption_column, strict=cfg.strict)
    side_b = read_sample_set(b, "--b", "B", prompt_list, caption_column=caption_column, strict=cfg.strict)
    try:
        order = check_same_prompts(side_a.prompts, side_b.prompts)
    except DifflensError as err:
        left_out = side_a.unreadable + side_b.unreadable
        if not left_out:
            raise
        raise DifflensError(f"{err.message[:-1]} ({left_out} unreadable image(s) were left out first, "
                            "which can remove a prompt from one side).", err.hint) from None
    warnings = [*side_a.warnings, *side_b.warnings]
    if side_a.folder.resolve() == side_b.folder.resolve():
        warnings.append(f"--a and --b are the same folder ({side_a.folder}): every prompt is a tie")
    if len(order) < FEW_PROMPTS:
        warnings.append(f"only {len(order)} prompts: intervals from resampling so few prompts are rough; "
                        f"compare on {FEW_PROMPTS} or more")
    scored = score_sets(chosen, side_a.files, side_a.prompts, side_b.files, side_b.prompts,
                        clip_model=cfg.clip_model, metric_options=metric_options, device=device,
                        offline=offline, batch_size=cfg.batch_size, warnings=warnings)
    results = [paired_comparison(s.chosen.key, s.chosen.label, s.a, side_a.prompts, s.b, side_b.prompts,
                                 bootstrap=cfg.bootstrap, seed=cfg.seed) for s in scored]
    settings: dict[str, Any] = {
        "metrics": [c.name for c in chosen], "bootstrap": cfg.bootstrap, "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "pairing": "by prompt: each prompt's mean score in A against its mean score in B; every prompt "
                   "weighs the same",
        "interval": "95% percentile interval of a paired bootstrap over prompts (the same resampled prompts "
                    "for A and B)",
        "ties": "a prompt whose mean scores are equal counts as half a win",
    }
    if any(c.name == "clip" for c in chosen):
        settings["clip_model"] = cfg.clip_model
    if metric_options:
        settings["metric_options"] = {k: v for k, v in metric_options.items() if k in settings["metrics"]}
    record = {
        "schema_version": SCHEMA_VERSION, "mode": "compare",
        "a": side_a.describe(), "b": side_b.describe(), "n_prompts": len(order),
        "settings": settings,
        "metrics": {r.key: r.to_json() for r in results},
        "per_prompt": {r.key: r.per_prompt() for r in results},
        "protocol": {s.chosen.key: s.fingerprint for s in scored},
        "versions": collect_versions(),
    }
    flagged: list[str] = []
    record = _encode(record, "", flagged)
    record["warnings"] = warnings + [w for w in flagged if w not in warnings]
    return record


def render(record: dict[str, Any], console: Any = None) -> None:
    """The comparison as a table (means, difference and win rate with their intervals) and the verdicts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from difflens.report.comparison import with_interval
    from difflens.report.summarize import fmt_number

    out = console or Console()

    table = Table(title=f"A: {record['a']['path']}  vs  B: {record['b']['path']} ({record['n_prompts']} "
                        "prompts)", title_justify="left")
    for col, just in (("metric", "left"), ("A", "right"), ("B", "right"), ("A - B [95%]", "right"),
                      ("A wins [95%]", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for entry in record["metrics"].values():
        table.add_row(escape(entry["label"]), fmt_number(entry["mean_a"]), fmt_number(entry["mean_b"]),
                      with_interval(entry["difference"]), with_interval(entry["win_rate"], 100.0, 3, "%"))
    out.print(table)
    for entry in record["metrics"].values():
        out.print(escape(entry["verdict"]), highlight=False, soft_wrap=True)
    for w in record.get("warnings", []):
        out.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)
