"""Generation throughput and CMMD cost.

    python benchmarks/bench_generation.py            # tiny sd15 64x64, 4 steps, 48 images; CMMD 10k x 768
    python benchmarks/bench_generation.py --quick    # 16 images; CMMD 2k x 768
    python benchmarks/bench_generation.py --family sdxl --naive   # also time the full-matrix CMMD
    python benchmarks/bench_generation.py --threads 1   # on a busy shared host (avoids oversubscription)

1. Images/s of ``difflens generate`` (the real runner: PNG + manifest + fsync per image) on a tiny random
   pipeline at batch size 1 versus the batch size difflens chooses (``--batch-size`` left out).
2. CMMD (sigma 10, x1000, float64, blockwise) on two sets of N x 768 random unit embeddings: time and peak
   resident memory above the baseline; ``--naive`` also times the reference's full-matrix formula.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _rss_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass


def bench_generation(family: str, n: int, size: int, steps: int) -> None:
    from difflens.generate.options import GenerateOptions
    from difflens.generate.runner import run_generation
    from difflens.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family)
    prompts = ["a photo of a cat", "a red car on the street", "a dog in the snow", "a house by a lake"]
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: first-call costs (allocator, kernel selection) out of the figures
        run_generation(pipe, family, prompts, Path(tmp) / "warm", GenerateOptions(
            num_samples=2, steps=steps, height=size, width=size, batch_size=1))
        rows = []
        for label, bs in (("batch 1", 1), ("auto", None)):
            rep = run_generation(pipe, family, prompts, Path(tmp) / label.replace(" ", ""), GenerateOptions(
                num_samples=n, steps=steps, height=size, width=size, batch_size=bs))
            rows.append((label, rep.batch_size, rep.images_per_s, rep.seconds))
    print(f"generation: tiny {family}, {size}x{size}, {steps} steps, {n} images "
          "(PNG + manifest + fsync each)")
    for label, bs, rate, secs in rows:
        print(f"  {label:8s} batch size {bs:3d}: {rate:7.2f} images/s  ({secs:.2f} s)")
    print(f"  auto / batch 1 = {rows[1][2] / rows[0][2]:.2f}x")


def bench_cmmd(n: int, dim: int, naive: bool) -> None:
    import numpy as np

    from difflens.metrics.cmmd import cmmd_from_embeddings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (rng.normal(size=(n, dim)) + 0.05).astype(np.float32)
    base = _rss_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    res = cmmd_from_embeddings(x, y)
    dt = time.perf_counter() - t0
    peak = _rss_mb("VmHWM") - base
    print(f"cmmd: {n} x {dim} vs {n} x {dim}, float64 blockwise: {dt:.2f} s, peak +{peak:.0f} MB, "
          f"value {res.value:.6f}")
    if naive:
        xn = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
        yn = y.astype(np.float64) / np.linalg.norm(y, axis=1, keepdims=True)
        base = _rss_mb("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        g = 1 / 200
        xs, ys = (xn * xn).sum(1), (yn * yn).sum(1)
        kxx = np.mean(np.exp(-g * (-2 * xn @ xn.T + xs[:, None] + xs[None, :])))
        kxy = np.mean(np.exp(-g * (-2 * xn @ yn.T + xs[:, None] + ys[None, :])))
        kyy = np.mean(np.exp(-g * (-2 * yn @ yn.T + ys[:, None] + ys[None, :])))
        ref = 1000 * (kxx + kyy - 2 * kxy)
        dt = time.perf_counter() - t0
        peak = _rss_mb("VmHWM") - base
        print(f"cmmd reference formula (full matrices, numpy float64): {dt:.2f} s, peak +{peak:.0f} MB, "
              f"value {ref:.6f} (rel diff {abs(ref - res.value) / abs(ref):.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes.")
    parser.add_argument("--family", default="sd15", help="Tiny pipeline family (sd15, sdxl, sd3, flux).")
    parser.add_argument("--naive", action="store_true", help="Also time the full-matrix CMMD formula.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 avoids oversubscription.")
    args = parser.parse_args()
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    bench_generation(args.family, n=16 if args.quick else 48, size=64, steps=4)
    bench_cmmd(2000 if args.quick else 10_000, 768, args.naive)


if __name__ == "__main__":
    main()
