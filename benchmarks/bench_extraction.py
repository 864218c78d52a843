"""Inception extraction speed: difflens vs torch-fidelity on the same folder and weights (run by hand).

Both run the same network (torch-fidelity's ``FeatureExtractorInceptionV3``) with the same weights file
(random-init in torch-fidelity's format unless ``--inception-weights`` is given) and the same batch size.
torch-fidelity runs as ``calculate_metrics`` does (``ImagesPathDataset`` + its ``DataLoader`` with its
default worker processes, resize on the device); difflens runs ``extract_features`` (reader threads, the
bit-identical resize) with both Inception implementations: ``reference`` (torch-fidelity's module as is,
bit-identical) and ``fast`` (batch-norm folded into the convolutions, channels-last; see
difflens.metrics.inception_fast). Model construction is timed apart. Runs alternate (torch-fidelity,
difflens reference, difflens fast, ...) after one warm-up batch each; the best of ``--repeats`` is reported as
images/s, plus the median, the process CPU time, and the largest feature difference to torch-fidelity
relative to the feature scale (0 for reference on CPU). Goal (issue 16): fast >= 2.0x torch-fidelity.

    .venv/bin/python benchmarks/bench_extraction.py                 # 200 images of 64 px
    .venv/bin/python benchmarks/bench_extraction.py --quick         # 32 images
    .venv/bin/python benchmarks/bench_extraction.py --num 2000 --size 256 --device cuda --batch-size 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _make_folder(folder: Path, num: int, size: int) -> list[Path]:
    from PIL import Image

    from difflens.demo.sample_images import natural_crops

    folder.mkdir(parents=True, exist_ok=True)
    imgs = natural_crops(num, size, seed=0)
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(folder / f"img_{i:05d}.png")
    return sorted(folder.glob("*.png"))


def _run_tf(files: list[Path], extractor: Any, batch_size: int, cuda: bool) -> tuple[Any, float, float]:
    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.utils import get_featuresdict_from_dataset

    t0 = _clock()
    out = get_featuresdict_from_dataset(ImagesPathDataset([str(f) for f in files]), extractor, batch_size,
                                        cuda, save_cpu_ram=False, verbose=False)
    if cuda:
        import torch

        torch.cuda.synchronize()
    t1 = _clock()
    return out["2048"].numpy(), t1[0] - t0[0], t1[1] - t0[1]


def _run_dl(files: list[Path], extractor: Any, batch_size: int) -> tuple[Any, float, float]:
    from difflens.metrics.extract import extract_features
    from difflens.metrics.sources import FolderSource

    t0 = _clock()
    ext = extract_features(FolderSource(files=list(files)), extractor, batch_size=batch_size,
                           show_progress=False)
    t1 = _clock()
    return ext.pool3, t1[0] - t0[0], t1[1] - t0[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=200, help="images in the folder")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--fast-batch-size", type=int, default=None,
                   help="batch size of the fast path (default: --batch-size)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--inception-weights", default=None, help="weights file (default: random-init)")
    p.add_argument("--quick", action="store_true", help="32 images, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.num, args.repeats = 32, 1

    import numpy as np
    import torch
    from torch_fidelity.utils import create_feature_extractor

    from difflens.metrics.inception import make_random_inception_weights, resolve_inception_weights
    from difflens.metrics.inception_fast import make_inception_extractor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        weights = args.inception_weights or make_random_inception_weights(tmpd / "w.pth", seed=0)
        files = _make_folder(tmpd / "imgs", args.num, args.size)
        t0 = _clock()
        tf_ex = create_feature_extractor("inception-v3-compat", ["2048", "logits_unbiased"], cuda=cuda,
                                         feature_extractor_weights_path=str(weights), verbose=False)
        tf_build = _clock()[0] - t0[0]
        t0 = _clock()
        dl_ex = make_inception_extractor(resolve_inception_weights(weights), device=device, impl="reference")
        dl_build = _clock()[0] - t0[0]
        t0 = _clock()
        fast_ex = make_inception_extractor(resolve_inception_weights(weights), device=device, impl="fast")
        fast_build = _clock()[0] - t0[0]
        fast_bs = args.fast_batch_size or args.batch_size
        warm = files[: min(len(files), args.batch_size)]
        _run_tf(warm, tf_ex, args.batch_size, cuda)
        _run_dl(warm, dl_ex, args.batch_size)
        _run_dl(warm, fast_ex, fast_bs)
        tf_t: list[tuple[float, float]] = []
        dl_t: list[tuple[float, float]] = []
        fast_t: list[tuple[float, float]] = []
        for _ in range(args.repeats):
            ft, w, c = _run_tf(files, tf_ex, args.batch_size, cuda)
            tf_t.append((w, c))
            fd, w, c = _run_dl(files, dl_ex, args.batch_size)
            dl_t.append((w, c))
            ff, w, c = _run_dl(files, fast_ex, fast_bs)
            fast_t.append((w, c))
        scale = float(np.abs(ft).max())
        diff = float(np.abs(ft - fd).max()) / scale
        diff_fast = float(np.abs(ft.astype(np.float64) - ff).max()) / scale

    n = len(files)
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"Inception extraction, {n} PNG images of {args.size}x{args.size}, batch {args.batch_size}, "
          f"device {device} ({gpu}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model build: torch-fidelity {tf_build:.2f} s, difflens reference {dl_build:.2f} s, difflens fast "
          f"{fast_build:.2f} s (fast batch {fast_bs})")
    print(f"{'':20}{'best img/s':>12}{'median img/s':>14}{'CPU s (best)':>14}{'vs tf (best)':>14}"
          f"{'max rel diff':>14}")
    for name, ts, d in (("torch-fidelity", tf_t, 0.0), ("difflens reference", dl_t, diff),
                        ("difflens fast", fast_t, diff_fast)):
        best = min(ts)
        print(f"{name:20}{n / best[0]:12.2f}{n / statistics.median(w for w, _ in ts):14.2f}{best[1]:14.1f}"
              f"{min(tf_t)[0] / best[0]:13.2f}x{d:14.2e}")
    print("goal: fast >= 2.0x torch-fidelity; reference bit-identical (max rel diff 0 on CPU); fast within "
          f"1e-5 of the feature scale ({scale:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
