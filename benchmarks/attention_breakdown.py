"""Where a captured generation's extra time goes, in milliseconds per run (run by hand; diagnosis).

Wall-clock timers (``time.perf_counter``) are wrapped around the capture's parts in this process, and the
captured runs of ``bench_attention.py`` (stride 1: every step's maps kept, ``result()`` timed) alternate
with plain runs. Printed: the median plain and captured run, their difference, and per captured run the
time inside each part (sums over its calls; the parts nest, so they do not add up):

- ``denoiser``, ``attention layers`` (the captured layers' modules), ``vae``: timed in the plain runs too
  (medians, plain -> captured), so the capture's cost inside the layers, elsewhere in the denoiser (not the
  capture's code: the cost of its work on the rest, e.g. caches and allocations) and after the denoiser
  (``exit`` and ``result``) can be told apart.
- ``kernel``: the CPU flash kernel the tap calls (the same kernel the plain run calls through
  ``F.scaled_dot_product_attention``); ``tap.handle`` is the kernel plus the tap's Python around it.
- ``observe``: the capturing processor's calls, the original processor included; ``tap.run`` is the
  original processor under the tap; ``_keep`` hands a steady-state call to the deferred batch (a full
  batch is scored there).
- ``flush``: scoring deferred calls (``lse_columns``) and adding them (``add_calls``, where full batches of
  steps are closed: ``close_batch``, of which ``entropy_and_peak`` measures the step maps).
- ``enter`` / ``exit`` / ``result``: installing and removing the capture (exit scores the last calls) and
  the aggregator's result (closes the last batch).

    .venv/bin/python benchmarks/attention_breakdown.py --family flux --repeats 30
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Parts timed in plain and captured runs alike (see :func:`_time_modules`).
MODULE_LABELS = ("denoiser", "attention layers", "vae")


def _clocked(inner: Any, totals: dict[str, float], label: str) -> Any:
    """``inner`` with each call's wall time added to ``totals[label]``."""

    @functools.wraps(inner)
    def clocked(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t0

    return clocked


def _install_timers(totals: dict[str, float]) -> None:
    """Wrap the capture's parts (this process only) so each call adds its wall time to ``totals``."""
    from difflens.attention import aggregate, capture, deferred, lse, wrapper

    lse._CPU_FLASH[0] = _clocked(lse._cpu_flash(), totals, "kernel")
    for owner, name, label in (
            (capture.AttentionCapture, "__enter__", "enter"), (capture.AttentionCapture, "__exit__", "exit"),
            (wrapper._CapturingProcessor, "_observe", "observe"), (lse.SdpaTap, "run", "tap.run"),
            (lse.SdpaTap, "handle", "tap.handle"), (capture.AttentionCapture, "_keep", "_keep"),
            (deferred.DeferredCalls, "flush", "flush"), (deferred, "lse_columns", "lse_columns"),
            (aggregate.OnlineAggregator, "add_calls", "add_calls"),
            (aggregate.OnlineAggregator, "_close_batch", "close_batch"),
            (aggregate, "entropy_and_peak", "entropy_and_peak"),
            (aggregate.OnlineAggregator, "result", "result")):
        setattr(owner, name, _clocked(getattr(owner, name), totals, label))


def _time_modules(plan: Any, totals: dict[str, float]) -> None:
    """Time the denoiser's forward, the captured attention layers' forwards and the VAE decoder's forward
    (instance attributes: this process only)."""
    from difflens.attention.layout import module_of

    modules = [(plan.denoiser, "denoiser")]
    modules += [(module_of(plan.denoiser, layer.name), "attention layers") for layer in plan.layers]
    vae = getattr(plan.pipe, "vae", None)
    if vae is not None:
        modules.append((getattr(vae, "decoder", vae), "vae"))
    for module, label in modules:
        module.forward = _clocked(module.forward, totals, label)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="flux", help="a bench_attention.py family (tiny or shapes-*)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import bench_attention as bench
    import torch

    torch.set_num_threads(args.threads)
    pipe = bench._pipeline(args.family)
    plan = bench._plan(args.family, pipe, args.steps, 64, 1)
    totals: dict[str, float] = {}
    _install_timers(totals)
    _time_modules(plan, totals)
    for _ in range(3):                                   # warm-up: first-call checks, allocator
        bench._plain(plan)
        bench._captured(plan, 1)
    runs: dict[str, dict[str, list[float]]] = {"plain": {}, "captured": {}}
    for _ in range(args.repeats):
        for kind in ("captured", "plain"):
            totals.clear()
            wall = bench._captured(plan, 1)[0][0] if kind == "captured" else bench._plain(plan)[0]
            for label, seconds in {"run": wall, **totals}.items():
                runs[kind].setdefault(label, []).append(seconds * 1e3)
    ms = {kind: {label: statistics.median(v) for label, v in parts.items()} for kind, parts in runs.items()}
    p_ms, c_ms = ms["plain"]["run"], ms["captured"]["run"]
    print(f"{args.family}: plain {p_ms:.2f} ms, captured {c_ms:.2f} ms (medians of {args.repeats}), "
          f"difference {c_ms - p_ms:.2f} ms ({c_ms / p_ms:.3f}x)")
    for label in MODULE_LABELS:
        if label in ms["plain"]:
            plain_ms, captured_ms = ms["plain"][label], ms["captured"][label]
            print(f"  {label:18s} plain {plain_ms:7.2f} ms -> captured {captured_ms:7.2f} ms")
    for label, value in ms["captured"].items():
        if label != "run" and label not in MODULE_LABELS:
            print(f"  {label:18s} {value:7.2f} ms per captured run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
