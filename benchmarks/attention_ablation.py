"""Where the attention capture's time goes: its cost with parts of it switched off (run by hand; diagnosis).

The A-B-A harness of ``bench_attention.py`` (:func:`bench_attention.aba_ratios`: each captured run divided
by the mean of the plain runs before and after it; median and smallest ratio over ``--repeats``), with one
variant of the capture per run of this script. The capture keeps only the last step's maps (stride = steps;
the benchmark times stride 1, every step's maps kept). Variants switch parts off by replacing them
in-process, so **the maps of every variant but ``full`` are wrong**: this measures time only.

- ``full``: the capture as shipped.
- ``noscore``: deferred layer calls are dropped instead of scored (no ``lse_columns``, no aggregation of
  later calls; each layer's first call is still scored).
- ``noscore+noclose``: also no closing of step batches (resize, spatial entropy, peak).
- ``noclose``: batches of steps are never closed (scoring kept).
- ``batchN``: the aggregator closes N steps at a time instead of ``MEASURE_BATCH``.
- ``notap``: the kernel tap passes every call through (the capture falls back to the replay route).

    .venv/bin/python benchmarks/attention_ablation.py --family flux --repeats 25 --variant full
    .venv/bin/python benchmarks/attention_ablation.py --family flux --repeats 25 --variant noscore
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("full", "noscore", "noscore+noclose", "noclose", "notap")


def _switch_off(variant: str) -> None:
    """Replace the parts of the capture that ``variant`` names (in this process only)."""
    from difflens.attention import aggregate, deferred, lse

    parts = set(variant.split("+"))
    if "noscore" in parts:
        deferred.DeferredCalls.flush = lambda self: self.discard()   # type: ignore[method-assign]
    if "noclose" in parts:
        def _forget_batch(self: aggregate.OnlineAggregator) -> None:
            self._slot = 0
            self._slot_steps.clear()
            self._slot_layers.clear()
        aggregate.OnlineAggregator._close_batch = _forget_batch      # type: ignore[method-assign]
    if "notap" in parts:
        lse.SdpaTap.handle = lambda self, func, args, kwargs: func(*args, **kwargs)  # type: ignore
    for part in parts:
        if part.startswith("batch"):
            aggregate.MEASURE_BATCH = int(part.removeprefix("batch"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="flux", help="a bench_attention.py family (tiny or shapes-*)")
    p.add_argument("--variant", default="full", help=f"one of {', '.join(VARIANTS)}, or batchN")
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.variant not in VARIANTS and not args.variant.removeprefix("batch").isdigit():
        p.error(f"--variant {args.variant!r}: use one of {', '.join(VARIANTS)}, or batchN (e.g. batch20)")

    import bench_attention as bench
    import torch

    torch.set_num_threads(args.threads)
    pipe = bench._pipeline(args.family)
    plan = bench._plan(args.family, pipe, args.steps, 64, args.steps)
    _switch_off(args.variant)
    for _ in range(3):                                   # warm-up: first-call checks, allocator
        bench._plain(plan)
        bench._captured(plan, args.steps)
    runs = [(args.variant, lambda: bench._captured(plan, args.steps)[0])]
    ratios = [wall for wall, _ in bench.aba_ratios(plan, runs, args.repeats)[0][args.variant]]
    print(f"{args.family} {args.variant}: captured / plain, median of {args.repeats} A-B-A ratios "
          f"{statistics.median(ratios):.3f}x (smallest {min(ratios):.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
