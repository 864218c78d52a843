"""Function API of the schedule mode: specs -> one result dict -> files.

``analyze_schedules`` validates every spec and traces every schedule before anything is written;
``write_outputs`` then writes ``schedule.json``, one CSV per schedule and the PNG plots.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.schedule.config import ScheduleConfig

_S = ScheduleConfig()  # the defaults
DEFAULT_SIZE = 1024

NON_FINITE_NOTE = (
    "JSON has no infinity: non-finite numbers are written as null. In log_snr lists null is -inf at the "
    "noisy end (zero SNR, pure noise: alphas_cumprod = 0 or flow s = 1) and +inf at the clean end (a step "
    "that returns the clean sample); NaN (a step that diverged) is null too and the trace_finite check "
    "fails. Each schedule also gives terminal_log_snr_text ('-inf' or a number) so the terminal value is "
    "never ambiguous."
)


def image_seq_len(height: int, width: int) -> int:
    """Image tokens of a Flux/SD3 transformer: 8x VAE downsampling, then 2x2 patches."""
    return (height // 16) * (width // 16)


def _dynamic_mu(config: dict[str, Any], height: int, width: int) -> tuple[float, int]:
    from difflens.schedule.adapt import dynamic_shift_mu

    seq = image_seq_len(height, width)
    mu = dynamic_shift_mu(seq, int(config.get("base_image_seq_len", 256)),
                          int(config.get("max_image_seq_len", 4096)),
                          float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15)))
    return mu, seq


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.6g}"


def _unique(label: str, taken: set[str]) -> str:
    out, k = label, 2
    while out in taken:
        out, k = f"{label}#{k}", k + 1
    taken.add(out)
    return out


def _jsonable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, (str, int, float, bool, type(None), list, dict)):
            out[k] = v
        else:
            out[k] = str(v)
    return out


def analyze_one(source: Any, steps: int, spacing: str | None, height: int | None, width: int | None) -> dict:
    """Build, adapt, trace and check one resolved :class:`~difflens.schedule.sources.ScheduleSource`."""
    from difflens.schedule.adapt import adapt, uses_dynamic_shifting
    from difflens.schedule.checks import run_checks
    from difflens.schedule.sources import build_scheduler
    from difflens.schedule.trace import trace

    scheduler, notes = build_scheduler(source, spacing)
    notes = list(source.notes) + notes
    cfg = dict(scheduler.config)
    mu = seq = None
    h, w = height, width
    if uses_dynamic_shifting(scheduler):
        if h is None or w is None:
            h, w = h or DEFAULT_SIZE, w or DEFAULT_SIZE
            notes.append(f"dynamic shifting needs the image size; {h}x{w} assumed (pass --height/--width)")
        mu, seq = _dynamic_mu(cfg, h, w)
        notes.append(f"dynamic shifting at {h}x{w}: image_seq_len = {seq}, mu = {mu:.4f}, shift = e^mu = "
                     f"{math.exp(mu):.4f}")
    elif height is not None or width is not None:
        notes.append("--height/--width do not change this schedule (no dynamic shifting)")
    sched = adapt(scheduler, mu=mu)
    tr = trace(scheduler, sched, steps, mu=mu, pipeline_class=source.pipeline_class)
    checks = run_checks(sched, tr)
    notes += list(sched.notes) + list(tr.notes)
    listed = sched.log_snr_at(tr.timesteps)
    lam_t = float(sched.log_snr[-1])
    return {
        "spec": source.spec,
        "source": source.kind,
        "location": source.location,
        "class": sched.class_name,
        "original_class": source.original_class,
        "pipeline_class": source.pipeline_class,
        "family": sched.family,
        "prediction_type": sched.prediction_type,
        "num_train_timesteps": sched.num_train_timesteps,
        "timestep_spacing": cfg.get("timestep_spacing"),
        "shift": sched.shift,
        "mu": mu,
        "image_size": [h, w] if mu is not None else None,
        "image_seq_len": seq,
        "terminal_log_snr": lam_t,
        "terminal_log_snr_text": _fmt(lam_t),
        "terminal_snr_zero": bool(lam_t == -math.inf),
        "terminal_clamped": sched.clamped_terminal,
        "config": _jsonable_config(cfg),
        "train": {
            "timesteps": sched.timesteps.tolist(),
            "tau": sched.tau.tolist(),
            "log_snr": sched.log_snr.tolist(),
            "sigma": sched.sigma.tolist(),
            "alphas_cumprod": sched.alphas_cumprod.tolist() if sched.alphas_cumprod is not None else None,
            "betas": sched.betas.tolist() if sched.betas is not None else None,
        },
        "inference": {
            "num_inference_steps": tr.num_inference_steps,
            "evaluations": tr.evaluations,
            "stochastic": tr.stochastic,
            "set_timesteps_kwargs": tr.set_timesteps_kwargs,
            "timesteps": tr.timesteps.tolist(),
            "tau": sched.tau_at(tr.timesteps).tolist(),
            "log_snr": tr.log_snr.tolist(),
            "listed_log_snr": listed.tolist(),
            "traced_timesteps": sched.timestep_at_log_snr(tr.log_snr).tolist(),
            "final_log_snr": tr.final_log_snr,
        },
        "checks": [c.to_dict() for c in checks],
        "notes": notes,
    }


def analyze_schedules(specs: Sequence[str], steps: int = _S.steps, spacing: str | None = _S.spacing,
                      height: int | None = _S.height, width: int | None = _S.width,
                      scheduler: str | None = _S.scheduler) -> dict[str, Any]:
    """Analyze every spec (preset, scheduler_config.json, pipeline folder or hub id; see
    :mod:`difflens.schedule.sources`) and return the result dict written as ``schedule.json``.

    ``steps`` inference steps are traced for each, with ``spacing`` overriding ``timestep_spacing`` and
    ``scheduler`` swapping the sampler class for specs without their own ``@Class``. ``height``/``width``
    set the image size for dynamic shifting (Flux; 1024x1024 when not given). Raises DifflensError on bad
    input, before anything is written.
    """
    from difflens.schedule.sources import SPACINGS, resolve_class_name, resolve_spec
    from difflens.versions import collect_versions

    if not specs:
        raise DifflensError("no schedule given.", "pass one or more SPECs (e.g. sd15 sdxl flux)")
    if steps < 1:
        raise DifflensError(f"--steps must be at least 1, got {steps}.", "pass --steps 1 or more")
    if spacing is not None and spacing not in SPACINGS:
        raise DifflensError(f"unknown --spacing {spacing!r}.", f"use one of {', '.join(SPACINGS)}")
    for name, v in (("--height", height), ("--width", width)):
        if v is not None and v < 16:
            raise DifflensError(f"{name} must be at least 16 pixels, got {v}.", f"pass {name} 512 or 1024")
    if scheduler is not None:
        scheduler = resolve_class_name(scheduler)
    sources = [resolve_spec(s, scheduler) for s in specs]
    taken: set[str] = set()
    schedules: dict[str, Any] = {}
    for src in sources:
        schedules[_unique(src.label, taken)] = analyze_one(src, steps, spacing, height, width)
    return {
        "mode": "schedule",
        "settings": {"specs": list(specs), "steps": steps, "spacing": spacing, "height": height,
                     "width": width, "scheduler": scheduler},
        "schedules": schedules,
        "notes": {"non_finite": NON_FINITE_NOTE,
                  "log_snr": "lambda = ln(SNR) = 2 ln(alpha/sigma): VP ln(a/(1-a)), sigma -2 ln sigma, "
                             "flow 2 ln((1-s)/s); DPM-Solver's lambda_t is half of it",
                  "tau": "normalized time: position in the training table, 0 = cleanest, 1 = noisiest",
                  "inference": "one entry per model evaluation (Heun/KDPM2 evaluate twice per step); "
                               "log_snr is traced from step() on dummy tensors, listed_log_snr is what the "
                               "training table gives for the timestep the model is told"},
        "versions": collect_versions(),
    }


def slug(label: str) -> str:
    """A file-name-safe form of a schedule label."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
    return s or "schedule"


def schedule_csv(entry: dict[str, Any]) -> str:
    """Long-form CSV of one schedule: a ``part`` column (train | inference), one row per entry."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["part", "index", "timestep", "tau", "log_snr", "listed_log_snr", "sigma", "alphas_cumprod",
                "beta"])
    tr = entry["train"]
    n = len(tr["timesteps"])

    def col(name: str, i: int) -> str:
        v = tr.get(name)
        if v is None or len(v) != n:
            return ""
        return _fmt(float(v[i]))

    for i in range(n):
        w.writerow(["train", i, _fmt(tr["timesteps"][i]), _fmt(tr["tau"][i]), _fmt(tr["log_snr"][i]), "",
                    col("sigma", i), col("alphas_cumprod", i), col("betas", i)])
    inf = entry["inference"]
    for i, t in enumerate(inf["timesteps"]):
        w.writerow(["inference", i, _fmt(t), _fmt(inf["tau"][i]), _fmt(inf["log_snr"][i]),
                    _fmt(inf["listed_log_snr"][i]), "", "", ""])
    w.writerow(["final", len(inf["timesteps"]), "", "", _fmt(inf["final_log_snr"]), "", "", "", ""])
    return buf.getvalue()


def check_out_dir(out_dir: str | Path) -> None:
    """The output folder must be a folder (or not exist yet)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DifflensError(f"--out {out} exists and is not a folder.", "pass a folder path for --out")


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``schedule.json``, ``<label>.csv`` per schedule and the PNG plots into ``out_dir``."""
    from difflens.atomic import write_json, write_text
    from difflens.schedule.plots import write_plots

    check_out_dir(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: set[str] = set()
    files: dict[str, str] = {}
    for label, entry in result["schedules"].items():
        name = _unique(slug(label), names)
        path = out / f"{name}.csv"
        write_text(path, schedule_csv(entry))
        files[label] = path.name
        written.append(path)
    written += write_plots(result, out)
    result = dict(result)
    result["files"] = {"csv": files, "plots": [p.name for p in written if p.suffix == ".png"]}
    write_json(out / "schedule.json", result)
    written.append(out / "schedule.json")
    return written


