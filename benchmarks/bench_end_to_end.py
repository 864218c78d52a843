"""End to end, folder to FID: difflens vs torch-fidelity vs clean-fid, same images and weights (by hand).

Two folders of PNG crops of the photographs bundled with scikit-image / scikit-learn
(``difflens.demo.sample_images.natural_crops``, seeds 0 and 1) and one Inception weights file: random-init
in torch-fidelity's format (``difflens.metrics.inception.make_random_inception_weights``) unless
``--inception-weights`` names the real ``pt_inception-2015-12-05`` file. Every tool is timed from the two
folder paths to the FID value, model construction included:

* difflens: ``compute_metrics(real, fake, "fid", inception_weights=W)`` (tf-legacy protocol), with the
  ``fast`` Inception implementation (batch-norm folded, channels-last) and with the default ``reference``
  (torch-fidelity's module, bit-identical features);
* torch-fidelity: ``calculate_metrics(input1=real, input2=fake, fid=True, feature_extractor_weights_path=W)``;
* clean-fid: ``compute_fid(real, fake, mode="legacy_tensorflow", custom_feat_extractor=...)``. clean-fid's own
  legacy_tensorflow network is NVIDIA's TorchScript file, which it downloads to /tmp and which cannot be
  rebuilt offline with other weights; so clean-fid runs its own pipeline (file list, its dataset and
  loader, numpy statistics, scipy ``sqrtm``) around torch-fidelity's network with the same weights file,
  fed the same uint8 pixels. Its FID is then comparable; its extraction speed is torch-fidelity's network.

Tools alternate (difflens, torch-fidelity, clean-fid, difflens, ...); the best of ``--repeats`` wall times
is reported, with the process CPU time (children included: torch-fidelity's loader workers) and the ratio
to difflens. All run on the same device with the same thread count and batch size.

    .venv/bin/python benchmarks/bench_end_to_end.py              # 500 + 500 images of 64 px
    .venv/bin/python benchmarks/bench_end_to_end.py --quick      # 100 + 100 images, one repeat
    .venv/bin/python benchmarks/bench_end_to_end.py --num 5000 --device cuda --batch-size 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_folders(root: Path, num: int, size: int) -> tuple[Path, Path]:
    from difflens.demo.sample_images import natural_crops, write_folder

    real = write_folder(natural_crops(num, size, seed=0), root / "real")
    fake = write_folder(natural_crops(num, size, seed=1), root / "fake")
    return real, fake


def run_difflens(real: Path, fake: Path, weights: Path, device: str, batch: int, impl: str = "fast") -> float:
    from difflens.metrics.api import compute_metrics

    res = compute_metrics(real, fake, "fid", inception_weights=weights, device=device, batch_size=batch,
                          show_progress=False, inception_impl=impl)
    return float(res["metrics"]["fid"]["value"])


def run_difflens_reference(real: Path, fake: Path, weights: Path, device: str, batch: int) -> float:
    return run_difflens(real, fake, weights, device, batch, impl="reference")


def run_torch_fidelity(real: Path, fake: Path, weights: Path, device: str, batch: int) -> float:
    import torch_fidelity

    res = torch_fidelity.calculate_metrics(input1=str(real), input2=str(fake), fid=True,
                                           feature_extractor_weights_path=str(weights),
                                           cuda=device.startswith("cuda"), batch_size=batch, verbose=False,
                                           cache=False)
    return float(res["frechet_inception_distance"])


def run_clean_fid(real: Path, fake: Path, weights: Path, device: str, batch: int) -> float:
    import torch
    from cleanfid import fid as cfid
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(weights)).to(device).eval()

    def extractor(x: Any) -> Any:  # clean-fid hands float [0, 255] pixels of the original size
        with torch.no_grad():
            return net(x.to(device).round().to(torch.uint8))[0]

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        value = cfid.compute_fid(str(real), str(fake), mode="legacy_tensorflow",
                                 custom_feat_extractor=extractor, device=torch.device(device),
                                 batch_size=batch, num_workers=0, verbose=False, use_dataparallel=False)
    return float(value)


TOOLS: dict[str, Callable[[Path, Path, Path, str, int], float]] = {
    "difflens --inception-impl fast": run_difflens,
    "difflens (default: reference)": run_difflens_reference,
    "torch-fidelity": run_torch_fidelity,
    "clean-fid (custom extractor)": run_clean_fid,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 + 100 images, one repeat.")
    p.add_argument("--num", type=int, default=500, help="Images per folder (default 500).")
    p.add_argument("--size", type=int, default=64, help="Image side in pixels (default 64).")
    p.add_argument("--batch-size", type=int, default=50, help="Batch size for every tool (default 50).")
    p.add_argument("--repeats", type=int, default=2, help="Runs per tool; the best is reported (default 2).")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    p.add_argument("--inception-weights", default=None,
                   help="A torch-fidelity Inception weights file (default: random-init weights).")
    p.add_argument("--only", action="append", default=[], help="Run only tools whose name contains this.")
    args = p.parse_args(argv)
    if args.quick:
        args.num, args.repeats = 100, 1

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tools = {k: v for k, v in TOOLS.items() if not args.only or any(w in k for w in args.only)}
    with tempfile.TemporaryDirectory(prefix="difflens-bench-e2e-") as tmp:
        root = Path(tmp)
        real, fake = make_folders(root, args.num, args.size)
        if args.inception_weights:
            weights = Path(args.inception_weights)
            kind = "given weights"
        else:
            from difflens.metrics.inception import make_random_inception_weights

            weights = make_random_inception_weights(root / "inception-random.pth")
            kind = "random-init weights (timing and agreement only; not a published FID)"
        print(f"folder to FID: {args.num} + {args.num} PNG images of {args.size} px, batch "
              f"{args.batch_size}, device {device}, {torch.get_num_threads()} torch threads, {kind}")
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        values: dict[str, float] = {}
        for _ in range(max(1, args.repeats)):
            for name, fn in tools.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), _cpu_seconds()
                values[name] = fn(real, fake, weights, device, args.batch_size)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
                if dt < best.get(name, float("inf")):
                    best[name], cpu[name] = dt, dc
        n_img = 2 * args.num
        ref = best.get("torch-fidelity")
        print(f"{'tool':32s} {'wall s':>8s} {'img/s':>8s} {'CPU s':>8s} "
              f"{'speed vs torch-fidelity':>24s}  FID")
        for name in tools:
            ratio = f"{ref / best[name]:.2f}x" if ref else "-"
            print(f"{name:32s} {best[name]:8.2f} {n_img / best[name]:8.1f} {cpu[name]:8.1f} {ratio:>24s}  "
                  f"{values[name]:.6f}")
        if "torch-fidelity" in values:
            base = values["torch-fidelity"]
            for name in tools:
                if name != "torch-fidelity":
                    rel = abs(values[name] - base) / max(abs(base), 1e-300)
                    print(f"FID relative difference, {name} vs torch-fidelity: {rel:.2e}")
        print("goal (issue 16): difflens >= 1.5x torch-fidelity's wall time speed on 1,000 + 1,000 PNGs")
        print("(N < 2048: the covariances are singular; difflens takes the trace term from the features, the "
              "others from scipy.linalg.sqrtm of a singular product, whence FID differences beyond rounding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
