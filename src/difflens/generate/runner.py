"""Resumable sample generation from a diffusers text-to-image pipeline.

Order of writes for each sample: PNG to a temporary file, renamed into place (atomic), then one manifest
line appended and fsync'ed. A rerun skips every index that has a manifest line and a PNG, so a crash,
a kill or a full disk never costs finished samples and never leaves a half-written one. One batch through
the pipeline is :mod:`difflens.generate.sampling`; the batch size is :mod:`difflens.generate.batching`.
Fault injection for the resume tests goes through the one testing seam, :mod:`difflens.testing`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflens import testing
from difflens.errors import DifflensError
from difflens.generate.batching import BatchSizer, is_oom
from difflens.generate.manifest import (
    FLAG_BLACK,
    FLAG_NAN,
    FLAG_NSFW,
    MANIFEST_NAME,
    SUMMARY_NAME,
    ManifestEntry,
    append_entry,
    check_folder,
    finished_entries,
    image_file,
    read_manifest,
    rewrite_manifest,
    write_settings,
)
from difflens.generate.options import GenerateOptions, GenerationReport
from difflens.generate.sampling import count_truncated, resolve_settings, run_pipeline
from difflens.generate.seeds import sample_seed
from difflens.interrupt import Interrupted, sigint_deferred


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
        testing.fault("write-png", done_here)
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
                if not is_oom(exc):
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
                        testing.fault("after-png", generated)
                        append_entry(out_dir, entry)
                        finished[index] = entry
                        generated += 1
                        bar.advance(1)
                except OSError as exc:
                    raise _disk_error(exc, out_dir, len(finished), options.num_samples) from None
                testing.fault("after-sample", generated)
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
