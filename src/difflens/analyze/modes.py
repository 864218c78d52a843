"""One function per mode: run it for an analysis config and write its outputs under RUN_DIR/<mode>.

Each returns optional extras for run.json (`fingerprints`, `notes`). Options come from the config's
per-mode table; unknown option names are errors, so a typo in analysis.toml never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from difflens.analyze.config import AnalysisConfig
from difflens.errors import DifflensError


def _take(options: dict[str, Any], mode: str, defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DifflensError(f"unknown option(s) {', '.join(unknown)} in the [{mode}] table.",
                            f"valid options: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def run_schedule(cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    """The model's own schedule plus any extra specs (presets) for comparison."""
    from difflens.schedule.api import analyze_schedules, write_outputs

    opts = _take(cfg.options("schedule"), "schedule",
                 {"steps": 50, "spacing": None, "height": None, "width": None, "scheduler": None,
                  "compare": []})
    specs = [cfg.model, *opts["compare"]]
    result = analyze_schedules(specs, steps=opts["steps"], spacing=opts["spacing"], height=opts["height"],
                               width=opts["width"], scheduler=opts["scheduler"])
    write_outputs(result, out)
    return {}


def _generate_samples(cfg: AnalysisConfig, out: Path, opts: dict[str, Any]) -> Path:
    from difflens.generate.api import generate

    if not cfg.prompts:
        raise DifflensError("the metrics mode of analyze needs prompts to generate samples.",
                            "pass --prompts FILE (one prompt a line)")
    samples = Path(opts["samples_dir"]) if opts.get("samples_dir") else out / "samples"
    generate(cfg.model, cfg.prompts, cfg.num_samples, samples, steps=opts["steps"],
             guidance=opts["guidance"], seed=cfg.seed, height=opts["height"], width=opts["width"],
             dtype=cfg.dtype, device=cfg.device, offline=cfg.offline)
    return samples


MODE_RUNNERS: dict[str, Callable[[AnalysisConfig, Path], dict[str, Any] | None]] = {
    "schedule": run_schedule,
}
