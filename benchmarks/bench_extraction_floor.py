"""Inception extraction speed against the compute floor of the device (by hand; CPU and, where present, CUDA).

The floor is what the arithmetic alone allows: images/s = (the device's measured float32 rate: the higher of a
matmul's and of one Inception-sized 3x3 convolution's) /
(FLOPs of one Inception-v3 forward at 299x299). FLOPs are counted with ``torch.utils.flop_counter`` on
difflens's own forward (``forward_normalized``: pool3 + unbiased logits), 2 FLOPs per multiply-add
(about 11.4 GFLOP, i.e. the 5.7 G multiply-adds usually quoted). The matmul rate is measured here with
the precision difflens computes in: float32 with TF32 off (``strict_float32``), so the floor is the one
that applies to the numbers difflens reports. Extraction is difflens's ``InceptionExtractor`` on uint8
images already in memory at 299x299 (decode and resize excluded: this measures the network), for both
``--inception-impl`` paths (``reference``: torch-fidelity's module; ``fast``: batch-norm folded,
channels-last).

    .venv/bin/python benchmarks/bench_extraction_floor.py                  # CPU, and CUDA when available
    .venv/bin/python benchmarks/bench_extraction_floor.py --quick
    .venv/bin/python benchmarks/bench_extraction_floor.py --device cuda --batch-size 256 --num 2048

GPU SECTION: UNTESTED ON A GPU. It was written and run on a CPU-only machine; the CUDA code path (device
placement, synchronisation, peak measurement with TF32 off) has not been executed on CUDA hardware.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def inception_flops(model: Any, device: str) -> float:
    """FLOPs (2 per multiply-add) of one 299x299 forward of difflens's Inception path."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from difflens.metrics.inception import forward_normalized

    x = torch.zeros(1, 3, 299, 299, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward_normalized(model, x)
    return float(counter.get_total_flops())


def _best_seconds(fn: Any, device: str, reps: int) -> float:
    """Shortest wall time of ``reps + 1`` runs of ``fn()`` (the first also warms up; a slower first run does
    not move the minimum), float32 with TF32 off."""
    import torch

    from difflens.metrics.inception import strict_float32

    best = float("inf")
    with strict_float32(), torch.inference_mode():
        for _ in range(reps + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(device: str, size: int, reps: int) -> float:
    """Best float32 GEMM rate (FLOP/s) with TF32 off."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return 2.0 * size ** 3 / _best_seconds(lambda: torch.mm(a, b), device, reps)


def conv_rate(device: str, reps: int) -> float:
    """Best float32 rate (FLOP/s) of one 3x3 convolution of Inception's size (192 -> 192 channels, 35 x 35,
    batch 16, channels-last): where the CPU's convolution kernels outrun its matmul (measured on an AVX-512
    EPYC: torch.mm 166-186 GFLOP/s, this convolution 429 on 2 threads), this is the higher ceiling."""
    import torch

    conv = torch.nn.Conv2d(192, 192, 3, padding=1, bias=False).to(device)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(16, 192, 35, 35, device=device).contiguous(memory_format=torch.channels_last)
    return 2.0 * 16 * 192 * 35 * 35 * 192 * 9 / _best_seconds(lambda: conv(x), device, reps)


def extraction_rate(extractor: Any, images: list[Any], batch: int, reps: int, device: str) -> float:
    """Best images/s of ``extractor`` over ``images`` in batches (after one warm-up batch)."""
    import torch

    extractor(images[:batch])
    best = float("inf")
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(0, len(images), batch):
            extractor(images[s:s + batch])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def run(device: str, num: int, batch: int, reps: int, gemm: int, weights: Path) -> None:
    import numpy as np
    import torch

    from difflens.metrics.inception import resolve_inception_weights
    from difflens.metrics.inception_fast import make_inception_extractor

    resolved = resolve_inception_weights(weights)          # hashes the file: once for both extractors
    extractors = {impl: make_inception_extractor(resolved, device=device, impl=impl)
                  for impl in ("reference", "fast")}
    flops = inception_flops(extractors["reference"].model, device)
    gemm_rate, conv = matmul_rate(device, gemm, reps=3), conv_rate(device, reps=3)
    peak = max(gemm_rate, conv)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (299, 299, 3), dtype=np.uint8) for _ in range(num)]
    rates = {impl: extraction_rate(ex, images, batch, reps, device) for impl, ex in extractors.items()}
    floor = peak / flops
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    tag = "  [GPU path UNTESTED on hardware when written]" if device.startswith("cuda") else ""
    print(f"{device} ({name}){tag}")
    print(f"  Inception-v3 forward at 299x299: {flops / 1e9:.2f} GFLOP/image "
          f"({flops / 2e9:.2f} G multiply-adds)")
    print(f"  float32 matmul rate (TF32 off, {gemm}x{gemm}): {gemm_rate / 1e9:.1f} GFLOP/s")
    print(f"  float32 3x3 convolution rate (192 ch, 35 x 35, batch 16): {conv / 1e9:.1f} GFLOP/s")
    print(f"  compute floor (the higher rate): {floor:.1f} images/s")
    for impl, rate in rates.items():
        print(f"  difflens extraction ({impl}): {rate:.1f} images/s (batch {batch}, {num} images) = "
              f"{rate * flops / 1e9:.1f} GFLOP/s = {100 * rate / floor:.0f}% of the floor")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Few images, one repeat.")
    p.add_argument("--device", action="append", default=[],
                   help="cpu and/or cuda (repeatable; default: cpu, plus cuda when available).")
    p.add_argument("--num", type=int, default=None, help="Images (default: 64 on CPU, 1024 on CUDA).")
    p.add_argument("--batch-size", type=int, default=None, help="Default: 16 on CPU, 128 on CUDA.")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--inception-weights", default=None, help="Weights file (default: random-init).")
    args = p.parse_args(argv)

    import torch

    from difflens.metrics.inception import make_random_inception_weights

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    with tempfile.TemporaryDirectory(prefix="difflens-bench-floor-") as tmp:
        weights = Path(args.inception_weights) if args.inception_weights else \
            make_random_inception_weights(Path(tmp) / "inception-random.pth")
        for dev in devices:
            cuda = dev.startswith("cuda")
            num = args.num or ((256 if args.quick else 1024) if cuda else (16 if args.quick else 64))
            batch = args.batch_size or (128 if cuda else (8 if args.quick else 16))
            run(dev, num, batch, 1 if args.quick else args.repeats, 4096 if cuda else 1024, weights)
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU section did not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
