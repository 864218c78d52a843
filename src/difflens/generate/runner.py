"""Resumable sample generation from a diffusers text-to-image pipeline.

Order of writes for each sample: PNG to a temporary file, renamed into place (atomic), then one manifest
line appended and fsync'ed. A rerun skips every index that has a manifest line and a PNG, so a crash,
a kill or a full disk never costs finished samples and never leaves a half-written one.

Each sample is drawn with its own ``torch.Generator("cpu").manual_seed(sample_seed(seed, index))``, so a
sample's starting noise does not depend on the batch it was made in or on the number of runs it took.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.generate.manifest import (
    FLAG_BLACK,
    FLAG_NAN,
    FLAG_NSFW,
    MANIFEST_NAME,
    SUMMARY_NAME,
    ManifestEntry,
    RunSettings,
    append_entry,
    check_folder,
    finished_entries,
    image_file,
    read_manifest,
    rewrite_manifest,
    write_settings,
)
from difflens.generate.prompts import prompts_digest
from difflens.generate.seeds import SEED_SCHEME, generator_for, sample_seed
from difflens.interrupt import Interrupted, sigint_deferred

#: Environment hook for tests: ``crash:K`` raises after K samples of this process are finished,
#: ``kill:K`` SIGKILLs the process after K samples, ``killpng:K`` SIGKILLs after the (K+1)-th PNG is
#: in place but before its manifest line, ``enospc:K`` fails the (K+1)-th PNG write with ENOSPC.
FAULT_ENV = "DIFFLENS_TEST_FAULT"

#: Parameters that mark a pipeline as image-conditioned (img2img, inpainting, control), not text-to-image.
_IMAGE_INPUTS = ("image", "mask_image", "control_image", "init_image", "video")


@dataclass(frozen=True)
class GenerateOptions:
    """Settings of one ``difflens generate`` call. ``None`` means the pipeline's own default."""

    num_samples: int
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int | None = None  # None: chosen automatically
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    max_batch_size: int = 64

    def validate(self) -> None:
        """Raise DifflensError for values that can never work (before anything is loaded or written)."""
        if self.num_samples < 1:
            raise DifflensError(f"--num-samples must be at least 1 (got {self.num_samples}).",
                                "pass --num-samples N with N >= 1")
        if self.steps is not None and self.steps < 1:
            raise DifflensError(f"--steps must be at least 1 (got {self.steps}).", "pass --steps 20, say")
        if self.batch_size is not None and self.batch_size < 1:
            raise DifflensError(f"--batch-size must be at least 1 (got {self.batch_size}).",
                                "leave --batch-size out to let difflens choose")
        for name, value in (("--height", self.height), ("--width", self.width)):
            if value is not None and value < 1:
                raise DifflensError(f"{name} must be positive (got {value}).", f"pass {name} 512, say")
        if self.guidance is not None and not (self.guidance == self.guidance):  # NaN
            raise DifflensError("--guidance is NaN.", "pass a number, e.g. --guidance 7.5")


@dataclass
class TruncationReport:
    """Prompts longer than a text encoder's limit: the pipeline truncates them silently."""

    prompts: int = 0  # distinct prompts truncated by at least one tokenizer
    samples: int = 0  # samples of this run whose prompt is truncated
    limits: dict[str, int] = field(default_factory=dict)  # tokenizer attribute -> token limit
    by_tokenizer: dict[str, int] = field(default_factory=dict)  # tokenizer attribute -> prompts truncated
    examples: list[str] = field(default_factory=list)


@dataclass
class GenerationReport:
    """What a generation call did; also written to ``summary.json`` in the folder."""

    out_dir: Path
    num_samples: int
    finished: int
    generated: int
    resumed: int
    flagged: dict[str, list[int]]
    truncation: TruncationReport
    batch_size: int
    seconds: float
    images_per_s: float
    settings: RunSettings

    def flagged_count(self) -> int:
        return len({i for idx in self.flagged.values() for i in idx})

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "num_samples": self.num_samples,
            "finished": self.finished,
            "generated_this_run": self.generated,
            "skipped_finished": self.resumed,
            "flagged": {k: {"count": len(v), "indices": v} for k, v in self.flagged.items()},
            "valid": self.finished - self.flagged_count(),
            "truncated_prompts": {
                "prompts": self.truncation.prompts,
                "samples": self.truncation.samples,
                "limits": self.truncation.limits,
                "by_tokenizer": self.truncation.by_tokenizer,
                "examples": self.truncation.examples,
            },
            "batch_size": self.batch_size,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "settings": self.settings.to_dict(),
        }


# --------------------------------------------------------------------------------------------- pipeline


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def check_text_to_image(pipe: Any) -> None:
    """Refuse pipelines that do not make images from text alone."""
    params = call_parameters(pipe)
    name = type(pipe).__name__
    if "prompt" not in params:
        raise DifflensError(f"{name} takes no text prompt, so it is not a text-to-image pipeline.",
                            "pass a text-to-image model (Stable Diffusion, SDXL, SD3, Flux, PixArt)")
    extra = [p for p in _IMAGE_INPUTS if p in params]
    if extra:
        raise DifflensError(f"{name} takes an input image ({extra[0]}=...), so it is not a text-to-image "
                            "pipeline.", "pass the text-to-image variant of the model")


def _default(params: dict[str, inspect.Parameter], name: str, fallback: Any) -> Any:
    p = params.get(name)
    if p is None or p.default is inspect.Parameter.empty or p.default is None:
        return fallback
    return p.default


def _size_multiple(pipe: Any) -> int:
    from difflens.models import size_multiple

    return size_multiple(pipe)


def default_size(pipe: Any) -> int:
    """The pipeline's default height/width in pixels."""
    from difflens.models import default_size as pipeline_default_size

    size = pipeline_default_size(pipe)
    if size is None:
        raise DifflensError(f"cannot tell the default image size of {type(pipe).__name__}.",
                            "pass --height and --width")
    return size


def resolve_settings(pipe: Any, model: str | Path, prompts: Sequence[str], options: GenerateOptions,
                     dtype: str) -> RunSettings:
    """The run's settings with the pipeline's defaults filled in (validated, nothing written)."""
    check_text_to_image(pipe)
    params = call_parameters(pipe)
    steps = options.steps if options.steps is not None else int(_default(params, "num_inference_steps", 50))
    guidance = options.guidance if options.guidance is not None else float(
        _default(params, "guidance_scale", 1.0))
    height = options.height or default_size(pipe)
    width = options.width or default_size(pipe)
    mult = _size_multiple(pipe)
    for name, value in (("--height", height), ("--width", width)):
        if value % mult:
            raise DifflensError(f"{name} {value} is not a multiple of {mult}, which "
                                f"{type(pipe).__name__} needs.",
                                f"pass {name} {max(mult, value // mult * mult)}")
    if options.negative_prompt is not None:
        if "negative_prompt" not in params:
            raise DifflensError(f"{type(pipe).__name__} takes no negative prompt.",
                                "leave --negative-prompt out")
        if "true_cfg_scale" in params:
            raise DifflensError(f"{type(pipe).__name__} uses a negative prompt only with true CFG "
                                "(true_cfg_scale > 1), which difflens generate does not run.",
                                "leave --negative-prompt out")
    sched = pipe.scheduler
    sched_config = json.dumps({k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
                              sort_keys=True, default=str)
    path = Path(str(model)).expanduser()
    model_str = str(path.resolve()) if path.exists() else str(model)
    return RunSettings(
        model=model_str, pipeline=type(pipe).__name__, scheduler=type(sched).__name__,
        scheduler_config=sched_config, steps=int(steps), guidance=float(guidance), height=int(height),
        width=int(width), negative_prompt=options.negative_prompt, seed=int(options.seed),
        seed_scheme=SEED_SCHEME, dtype=dtype, prompts_digest=prompts_digest(list(prompts)),
        num_prompts=len(prompts),
    )


def pipeline_kwargs(pipe: Any, settings: RunSettings, prompts: Sequence[str], seeds: Sequence[int]) -> dict:
    """Keyword arguments of one pipeline call; each sample gets its own CPU generator."""
    kwargs: dict[str, Any] = {
        "prompt": list(prompts),
        "num_inference_steps": settings.steps,
        "height": settings.height,
        "width": settings.width,
        "generator": [generator_for(s) for s in seeds],
        "output_type": "np",
    }
    if "guidance_scale" in call_parameters(pipe):
        kwargs["guidance_scale"] = settings.guidance
    if settings.negative_prompt is not None:
        kwargs["negative_prompt"] = [settings.negative_prompt] * len(prompts)
    return kwargs


def run_pipeline(pipe: Any, settings: RunSettings, prompts: Sequence[str],
                 seeds: Sequence[int]) -> tuple[Any, list[bool], list[bool]]:
    """Images as uint8 (B, H, W, 3), NaN flags, safety-checker flags.

    The uint8 conversion is diffusers' own (``(x * 255).round()``), so a PNG holds exactly what
    ``pipe(...).images[0]`` (PIL output) holds. NaN pixels are set to 0 after being flagged.
    """
    import numpy as np
    import torch

    with torch.inference_mode(), _quiet_libraries():
        out = pipe(**pipeline_kwargs(pipe, settings, prompts, seeds))
    images = np.asarray(out.images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    nan = [bool(np.isnan(im).any()) for im in images]
    images = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    u8 = (images * 255).round().clip(0, 255).astype(np.uint8)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    nsfw_raw = getattr(out, "nsfw_content_detected", None)
    nsfw = [bool(x) for x in nsfw_raw] if nsfw_raw is not None else [False] * len(u8)
    if u8.shape[1:3] != (settings.height, settings.width):
        raise DifflensError(f"the pipeline returned {u8.shape[2]}x{u8.shape[1]} images, not the "
                            f"{settings.width}x{settings.height} asked for.",
                            "pass --height/--width the pipeline supports")
    return u8, nan, nsfw


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence per-call truncation warnings of diffusers/transformers: difflens counts and reports them."""
    import diffusers
    import transformers

    old_d = diffusers.utils.logging.get_verbosity()
    old_t = transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(old_d)
        transformers.utils.logging.set_verbosity(old_t)


def count_truncated(pipe: Any, run_prompts: Sequence[str]) -> TruncationReport:
    """Count the prompts each of the pipeline's tokenizers truncates (CLIP: 77 tokens; T5: the pipeline's
    ``max_sequence_length`` default)."""
    params = call_parameters(pipe)
    max_seq = _default(params, "max_sequence_length", None)
    report = TruncationReport()
    unique = list(dict.fromkeys(run_prompts))
    truncated: set[str] = set()
    with _quiet_libraries():
        for attr in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tok = getattr(pipe, attr, None)
            if tok is None:
                continue
            is_clip = type(tok).__name__.startswith("CLIP")
            limit = tok.model_max_length if (is_clip or max_seq is None) else int(max_seq)
            if not limit or limit > 100_000:
                continue
            report.limits[attr] = int(limit)
            n = 0
            for p in unique:
                ids = tok(p, add_special_tokens=True, truncation=False)["input_ids"]
                if len(ids) > limit:
                    n += 1
                    truncated.add(p)
            report.by_tokenizer[attr] = n
    report.prompts = len(truncated)
    report.samples = sum(1 for p in run_prompts if p in truncated)
    report.examples = [p[:80] for p in unique if p in truncated][:3]
    return report


# ------------------------------------------------------------------------------------------- batch size


class BatchSizer:
    """Fixed batch size, or an automatic one: start at 1, double while throughput improves by >= 10%,
    keep the best; halve on out-of-memory. Each candidate size is timed on ``trials`` full batches and
    rated by its fastest one (the least disturbed by other load). The samples made while probing are
    kept (nothing is wasted).
    """

    def __init__(self, fixed: int | None, cap: int, trials: int = 2) -> None:
        self.fixed = fixed
        self.cap = max(1, cap)
        self.trials = max(1, trials)
        self.size = fixed or 1
        self.settled = fixed is not None
        self.best_rate = 0.0
        self.best_size = self.size
        self._warm = fixed is not None
        self._rates: list[float] = []

    def next(self, remaining: int) -> int:
        return max(1, min(self.size, remaining))

    def record(self, size: int, n: int, seconds: float) -> None:
        """Feed the time one batch took."""
        if self.settled or n < self.size:  # a short last batch says nothing about this size
            return
        if not self._warm:  # the first call pays one-off costs (allocations, kernel selection)
            self._warm = True
            return
        self._rates.append(n / max(seconds, 1e-9))
        if len(self._rates) < self.trials:
            return
        rate, self._rates = max(self._rates), []
        if self.best_rate == 0.0 or rate >= self.best_rate * 1.10:
            self.best_rate, self.best_size = rate, size
            if size * 2 <= self.cap:
                self.size = size * 2
                return
        self.size = self.best_size
        self.settled = True

    def shrink(self) -> bool:
        """After an out-of-memory error: halve and settle. False when already at 1."""
        if self.size <= 1:
            return False
        self.size = max(1, self.size // 2)
        self.best_size = min(self.best_size, self.size)
        self.settled = True
        return True


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ------------------------------------------------------------------------------------------------ fault


def _fault_spec() -> tuple[str, int] | None:
    raw = os.environ.get(FAULT_ENV, "")
    if ":" not in raw:
        return None
    kind, _, k = raw.partition(":")
    try:
        return kind, int(k)
    except ValueError:
        return None


def _fault(stage: str, done_here: int) -> None:
    """Test hook (see FAULT_ENV); does nothing unless the variable is set."""
    spec = _fault_spec()
    if spec is None:
        return
    kind, k = spec
    if done_here != k:
        return
    if kind == "crash" and stage == "after-sample":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={kind}:{k})")
    if (kind == "kill" and stage == "after-sample") or (kind == "killpng" and stage == "after-png"):
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc" and stage == "write-png":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------------------------------- running


def _clean_temp_files(out_dir: Path) -> int:
    """Remove temporary files a SIGKILL left behind (atomic writes are ``.NAME.XXXX.tmp``)."""
    n = 0
    for folder in (out_dir, out_dir / "images"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


def _save_png(dest: Path, array: Any, done_here: int) -> None:
    from PIL import Image

    from difflens.atomic import atomic_path

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        _fault("write-png", done_here)
        with open(tmp, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())


def _disk_error(exc: OSError, out_dir: Path, finished: int, total: int) -> DifflensError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
        hint = "free some space, then rerun the same command: it resumes where it stopped"
    else:
        what = f"writing failed ({exc.strerror or exc})"
        hint = "fix the folder's permissions or space, then rerun the same command to resume"
    return DifflensError(f"{what} while writing to {out_dir}; {finished} of {total} samples are finished "
                         "and kept, nothing half-written was left.", hint)


class _Progress:
    """A progress bar with images/s and time left; off a terminal a log line at least every
    ``console.PROGRESS_LOG_INTERVAL_S`` (30 s) and one at the end."""

    def __init__(self, total: int, done: int) -> None:
        from difflens import console as console_mod
        from difflens.console import console

        self.console = console
        self.mod = console_mod  # read at every step, so a test can shrink PROGRESS_LOG_INTERVAL_S
        self.total = total
        self.start_done = done
        self.done = done
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.bar: Any = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                TextColumn("{task.fields[left]}"), console=console)
            self.bar.start()
            self.task = self.bar.add_task("generate", total=total, completed=done, rate="", left="")

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        left_s = _fmt_seconds(left)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{rate:.2f} img/s", left=f"{left_s} left")
        elif time.perf_counter() - self.last_log >= self.mod.PROGRESS_LOG_INTERVAL_S:
            self.last_log = time.perf_counter()
            self._log()

    def _log(self) -> None:
        self.console.print(self.mod.progress_line("generate", self.done, self.total, self.rate(), "img"),
                           highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.done == self.total:  # the closing line; an error or Ctrl-C has its own line instead
            self._log()


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_generation(pipe: Any, model: str | Path, prompts: Sequence[str], out_dir: str | Path,
                   options: GenerateOptions, dtype: str = "float32") -> GenerationReport:
    """Generate ``options.num_samples`` samples into ``out_dir``, skipping the finished ones.

    ``prompts`` is the prompt list of the prompts file (cycled to ``num_samples``). Validates settings and
    the folder before writing anything; raises DifflensError for bad input, a full disk or an
    out-of-memory error at batch size 1.
    """
    from difflens.atomic import write_json
    from difflens.distributed import all_gather_json, get_context, main_first, shard_list
    from difflens.generate.prompts import cycle_prompts
    from difflens.versions import collect_versions

    ctx = get_context()  # torchrun / accelerate launch: one rank per device; else a single process
    options.validate()
    out_dir = Path(out_dir).expanduser()
    settings = resolve_settings(pipe, model, prompts, options, dtype)
    run_prompts = cycle_prompts(list(prompts), options.num_samples)
    truncation = count_truncated(pipe, run_prompts)

    # ---- first write: the settings file; then tidy up what a kill may have left. Rank 0 alone, before
    # the other ranks look at the folder (they then find it resuming, with rank 0's settings)
    with main_first(ctx):
        resuming = check_folder(out_dir, settings)
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if not resuming:
                write_settings(out_dir, settings, collect_versions())
            _clean_temp_files(out_dir)
            entries, bad_lines = read_manifest(out_dir)
            finished = {i: e for i, e in entries.items() if (out_dir / e.file).is_file()
                        and (out_dir / e.file).stat().st_size > 0}
            if bad_lines or len(finished) != len(entries) or (
                    (out_dir / MANIFEST_NAME).exists() and _manifest_lines(out_dir) != len(entries)):
                rewrite_manifest(out_dir, finished)
    if ctx.is_distributed:
        finished = finished_entries(out_dir)
        ctx.barrier()  # every rank has read the same manifest before any rank appends to it
    todo_all = [i for i in range(options.num_samples) if i not in finished]
    resumed = options.num_samples - len(todo_all)
    # contiguous shares of whole batches: with a fixed --batch-size every sample is made in the same
    # batch as in a single-process run, so the union of the ranks' images is that run pixel for pixel
    todo = shard_list(todo_all, ctx.rank, ctx.world_size, block=options.batch_size or 1)

    from difflens.console import console

    if resuming and todo_all and ctx.is_main:
        console.print(f"resuming: {resumed} of {options.num_samples} samples are finished, "
                      f"{len(todo_all)} to go")
    if truncation.prompts and ctx.is_main:
        console.print(f"[yellow]warning:[/] {truncation.prompts} prompt(s) ({truncation.samples} samples) "
                      f"are longer than the text encoder limit {truncation.limits} and are truncated.")

    import torch

    cap = options.max_batch_size if str(getattr(pipe, "device", "cpu")).startswith("cuda") else 16
    sizer = BatchSizer(options.batch_size, cap)
    # a distributed rank shows its own share
    bar = _Progress(len(todo), 0) if ctx.is_distributed else _Progress(options.num_samples, resumed)
    generated = 0
    t_start = time.perf_counter()
    pos = 0
    try:
        while pos < len(todo):
            size = sizer.next(len(todo) - pos)
            batch = todo[pos:pos + size]
            seeds = [sample_seed(settings.seed, i) for i in batch]
            t0 = time.perf_counter()
            try:
                images, nan, nsfw = run_pipeline(pipe, settings, [run_prompts[i] for i in batch], seeds)
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if not sizer.shrink():
                    raise DifflensError(
                        "out of memory at batch size 1.",
                        "use --dtype float16/bfloat16 or a smaller --height/--width") from None
                console.print(f"out of memory: batch size lowered to {sizer.size}")
                continue
            sizer.record(len(batch), len(batch), time.perf_counter() - t0)
            for j, index in enumerate(batch):
                flags = []
                if nan[j]:
                    flags.append(FLAG_NAN)
                elif int(images[j].max()) == 0:
                    flags.append(FLAG_BLACK)
                if nsfw[j]:
                    flags.append(FLAG_NSFW)
                entry = ManifestEntry(
                    index=index, prompt=run_prompts[index], seed=seeds[j], file=image_file(index),
                    model=settings.model, scheduler=settings.scheduler, steps=settings.steps,
                    guidance=settings.guidance, height=settings.height, width=settings.width,
                    negative_prompt=settings.negative_prompt, dtype=settings.dtype, batch_size=len(batch),
                    flags=tuple(flags),
                )
                try:
                    with sigint_deferred():  # Ctrl-C: the image and its manifest line, or neither
                        _save_png(out_dir / entry.file, images[j], generated)
                        _fault("after-png", generated)
                        append_entry(out_dir, entry)
                        finished[index] = entry
                        generated += 1
                        bar.advance(1)
                except OSError as exc:
                    raise _disk_error(exc, out_dir, len(finished), options.num_samples) from None
                _fault("after-sample", generated)
            pos += len(batch)
    except KeyboardInterrupt:
        done = sum(1 for i in finished if i < options.num_samples)
        raise Interrupted(f"generation stopped with {done} of {options.num_samples} samples finished in "
                          f"{out_dir}; rerun the same command to resume") from None
    finally:
        bar.close()
    seconds = time.perf_counter() - t_start
    if ctx.is_distributed:  # every rank learns the others' new samples; rank 0 rewrites the manifest
        finished, generated = _gather_new_entries(ctx, out_dir, finished, todo, generated)
        seconds = max(all_gather_json(seconds, ctx))
    flagged: dict[str, list[int]] = {FLAG_NAN: [], FLAG_BLACK: [], FLAG_NSFW: []}
    for i in sorted(finished):
        if i >= options.num_samples:
            continue
        for flag in finished[i].flags:
            flagged.setdefault(flag, []).append(i)
    report = GenerationReport(
        out_dir=out_dir, num_samples=options.num_samples,
        finished=sum(1 for i in finished if i < options.num_samples), generated=generated, resumed=resumed,
        flagged=flagged, truncation=truncation, batch_size=sizer.size, seconds=seconds,
        images_per_s=generated / seconds if seconds > 0 and generated else 0.0, settings=settings,
    )
    if ctx.is_main:
        with contextlib.suppress(OSError):  # a summary is a convenience; a full disk must not hide the result
            write_json(out_dir / SUMMARY_NAME, {**report.to_dict(), "versions": collect_versions(),
                                                "distributed": ctx.describe()})
    ctx.barrier()  # the folder is complete on every rank's return
    return report


def _gather_new_entries(ctx: Any, out_dir: Path, finished: dict[int, ManifestEntry], todo: Sequence[int],
                        generated: int) -> tuple[dict[int, ManifestEntry], int]:
    """Share the samples each rank made this run; rank 0 rewrites the manifest sorted by index from
    them (which also repairs lines lost to non-atomic appends on network file systems)."""
    from difflens.distributed import all_gather_json, all_reduce_sum_int

    mine = [finished[i].to_json() for i in todo if i in finished]
    for lines in all_gather_json(mine, ctx):
        for line in lines:
            entry = ManifestEntry.from_dict(json.loads(line))
            finished[entry.index] = entry
    total = int(all_reduce_sum_int([generated], ctx)[0])
    if ctx.is_main:
        rewrite_manifest(out_dir, finished)
    return finished, total


def _manifest_lines(out_dir: Path) -> int:
    with open(out_dir / MANIFEST_NAME, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def regenerate(pipe: Any, entry: ManifestEntry, alone: bool = False) -> Any:
    """Regenerate one sample from its manifest entry: uint8 (H, W, 3).

    ``alone=True`` is exactly ``pipe(prompt, ..., generator=torch.Generator("cpu").manual_seed(entry.seed))``:
    bit-identical to the stored PNG when the sample was made at batch size 1. By default the call has the
    recorded batch size (the sample repeated, each copy with its own generator of the same seed), which
    reproduces batched samples bit-exactly too, since a row's result depends on the batch shape only.
    """
    settings = RunSettings(
        model=entry.model, pipeline=type(pipe).__name__, scheduler=entry.scheduler, scheduler_config="",
        steps=entry.steps, guidance=entry.guidance, height=entry.height, width=entry.width,
        negative_prompt=entry.negative_prompt, seed=0, seed_scheme=SEED_SCHEME, dtype=entry.dtype,
        prompts_digest="", num_prompts=0,
    )
    n = 1 if alone else max(1, entry.batch_size)
    images, _, _ = run_pipeline(pipe, settings, [entry.prompt] * n, [entry.seed] * n)
    return images[0]
