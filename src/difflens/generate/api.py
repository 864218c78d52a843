"""Function API of the generate mode: ``generate`` (resumable) and ``regenerate_sample``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.config import RUNTIME
from difflens.errors import DifflensError
from difflens.generate.manifest import MANIFEST_NAME, read_samples, read_settings
from difflens.generate.options import GenerateOptions, GenerationReport
from difflens.generate.runner import run_generation

_G = GenerateOptions(num_samples=1)  # the defaults


def generate(model: str | Path, prompts: str | Path | Sequence[str], num_samples: int, out_dir: str | Path, *,
             steps: int | None = _G.steps, guidance: float | None = _G.guidance, seed: int = _G.seed,
             batch_size: int | None = _G.batch_size, height: int | None = _G.height,
             width: int | None = _G.width, negative_prompt: str | None = _G.negative_prompt,
             dtype: str = RUNTIME.dtype, device: str | None = RUNTIME.device, offline: bool = RUNTIME.offline,
             pipe: Any = None) -> GenerationReport:
    """Generate ``num_samples`` images from a text-to-image pipeline into ``out_dir``, resumably.

    ``prompts`` is a prompts file (txt/jsonl/csv) or a list of prompts, cycled to ``num_samples``.
    ``pipe`` may be an already loaded pipeline (then ``dtype``/``device``/``offline`` only label the run).
    Rerunning with the same arguments continues where a crash or kill stopped; other settings into the
    same folder are refused. Writes ``images/NNNNNN.png``, ``manifest.jsonl``, ``generation.json`` and
    ``summary.json``.
    """
    from difflens.generate.prompts import load_prompts
    from difflens.models import load_pipeline, resolve_dtype

    options = GenerateOptions(num_samples=num_samples, steps=steps, guidance=guidance, seed=seed,
                              batch_size=batch_size, height=height, width=width,
                              negative_prompt=negative_prompt)
    options.validate()
    resolve_dtype(dtype)
    if isinstance(prompts, (str, Path)):
        prompt_list = load_prompts(prompts)
    else:
        prompt_list = [str(p).strip() for p in prompts if str(p).strip()]
        if not prompt_list:
            raise DifflensError("the prompt list is empty.", "pass at least one prompt")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DifflensError(f"--out {out} is a file.", "pass a folder path")
    if out.is_dir() and read_settings(out) is None and any(out.iterdir()):  # before a slow model load
        raise DifflensError(f"--out {out} is not empty and was not made by difflens generate.",
                            "pass a new or empty folder")
    from difflens.distributed import get_context

    ctx = get_context()  # torchrun / accelerate launch: one rank per device; else a single process
    ctx.barrier()  # every rank has looked at the folder before rank 0 writes to it
    if pipe is None:
        if ctx.is_distributed and device in (None, "auto", "cuda"):
            device = ctx.device  # each rank on the GPU of its LOCAL_RANK
        pipe = load_pipeline(model, dtype=dtype, device=device, offline=offline)
    return run_generation(pipe, model, prompt_list, out, options, dtype=dtype)


def regenerate_sample(out_dir: str | Path, index: int, pipe: Any = None, device: str | None = None,
                      offline: bool = False, alone: bool = False) -> Any:
    """Regenerate sample ``index`` of a generation folder: uint8 array (H, W, 3).

    Loads the recorded model with the recorded dtype unless ``pipe`` is given. See
    :func:`difflens.generate.sampling.regenerate` for ``alone``.
    """
    from difflens.generate.sampling import regenerate
    from difflens.models import load_pipeline

    entries = {e.index: e for e in read_samples(out_dir, include_flagged=True)}
    if index not in entries:
        raise DifflensError(f"sample {index} is not finished in {out_dir}.", "pass a finished index")
    entry = entries[index]
    if pipe is None:
        settings = read_settings(out_dir)
        dtype = settings.dtype if settings else entry.dtype
        pipe = load_pipeline(entry.model, dtype=dtype, device=device, offline=offline)
    return regenerate(pipe, entry, alone=alone)


# ------------------------------------------------------------------------------ generate-then-evaluate


@dataclass
class GeneratedSamples:
    """The finished, valid samples of a generation folder, ready for the metrics: ``files[i]`` was made
    from ``prompts[i]``. ``flagged`` samples (NaN, all-black, safety-blacked) are left out and counted."""

    folder: Path
    files: list[Path]
    prompts: list[str]
    flagged: int
    report: GenerationReport | None = None

    def warnings(self) -> list[str]:
        out = []
        if self.flagged:
            out.append(f"{self.folder}: {self.flagged} generated sample(s) are NaN or all-black (see "
                       "summary.json) and were left out of the metrics")
        if self.report is not None and self.report.truncation.prompts:
            t = self.report.truncation
            out.append(f"{t.prompts} prompt(s) ({t.samples} samples) exceeded the pipeline's text encoder "
                       f"limit {t.limits} and were truncated during generation")
        return out


def is_generation_folder(path: str | Path) -> bool:
    """True for a folder written by ``difflens generate`` (it holds ``manifest.jsonl``)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def load_generated(folder: str | Path, num_samples: int | None = None) -> GeneratedSamples:
    """Valid samples of a generation folder (indices below ``num_samples`` when given), by index, read as
    the metrics read any ``--fake`` folder with a manifest (:mod:`difflens.generate.pairs`)."""
    from difflens.generate.pairs import read_paired_folder

    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file():
        raise DifflensError(f"{folder} has no {MANIFEST_NAME}.", "pass a folder written by difflens generate")
    paired = read_paired_folder(folder, "prompt", num_samples)
    return GeneratedSamples(folder=folder, files=paired.files, prompts=paired.prompts, flagged=paired.flagged)


def default_samples_dir(model: str | Path, prompts: Sequence[str], *, steps: int | None,
                        guidance: float | None, seed: int, height: int | None, width: int | None,
                        negative_prompt: str | None, dtype: str) -> Path:
    """The cache folder for generate-then-evaluate without ``--samples-dir``:
    ``$DIFFLENS_CACHE_DIR/samples/<key>`` (else ``~/.cache/difflens/samples/<key>``), keyed by everything
    but the sample count, so a later call with a larger ``--num-samples`` extends the same folder."""
    import hashlib
    import json
    import os

    from difflens.generate.prompts import prompts_digest

    path = Path(str(model)).expanduser()
    key = json.dumps({"model": str(path.resolve()) if path.exists() else str(model),
                      "prompts": prompts_digest(list(prompts)), "steps": steps, "guidance": guidance,
                      "seed": seed, "height": height, "width": width, "negative_prompt": negative_prompt,
                      "dtype": dtype}, sort_keys=True)
    env = os.environ.get("DIFFLENS_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "difflens"
    name = path.name if path.exists() else str(model).replace("/", "--")
    return root / "samples" / f"{name[:60]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def generate_for_metrics(model: str | Path, prompts: str | Path | Sequence[str], num_samples: int,
                         samples_dir: str | Path | None = None, *, steps: int | None = None,
                         guidance: float | None = None, seed: int = 0, batch_size: int | None = None,
                         height: int | None = None, width: int | None = None,
                         negative_prompt: str | None = None, dtype: str = "float32",
                         device: str | None = None, offline: bool = False,
                         pipe: Any = None) -> GeneratedSamples:
    """Generate (or resume, or reuse) ``num_samples`` samples and return the valid ones for the metrics.

    Into ``samples_dir``, or a cache folder keyed by the settings (:func:`default_samples_dir`).
    """
    from difflens.generate.prompts import load_prompts

    prompt_list = load_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
    folder = Path(samples_dir).expanduser() if samples_dir is not None else default_samples_dir(
        model, prompt_list, steps=steps, guidance=guidance, seed=seed, height=height, width=width,
        negative_prompt=negative_prompt, dtype=dtype)
    report = generate(model, prompt_list, num_samples, folder, steps=steps, guidance=guidance, seed=seed,
                      batch_size=batch_size, height=height, width=width, negative_prompt=negative_prompt,
                      dtype=dtype, device=device, offline=offline, pipe=pipe)
    out = load_generated(folder, num_samples)
    out.report = report
    return out
