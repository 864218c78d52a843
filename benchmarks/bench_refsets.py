"""Reference-set reading throughput: decode + resize/center-crop rate from parquet (streamed) and an Arrow
folder (memory-mapped), 1 vs several decode threads, and the cost of drawing a subset.

Run by hand: ``.venv/bin/python benchmarks/bench_refsets.py [--n 400] [--size 256]``. Prints figures.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path


def _dataset(root: Path, n: int, size: int) -> tuple[Path, Path]:
    """n JPEG images of (size + size // 4) x size pixels (COCO-like aspect), as parquet and Arrow folder."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from difflens.demo.sample_images import natural_crops
    from difflens.refsets.hf_datasets import datasets_env

    crops = natural_crops(min(n, 64), size + size // 4, seed=0)
    cells = []
    for i in range(n):
        buf = io.BytesIO()
        PILImage.fromarray(crops[i % len(crops)][: size]).save(buf, format="JPEG", quality=90)
        cells.append({"bytes": buf.getvalue(), "path": None})
    feats = Features({"image": Image(), "caption": Value("string")})
    with datasets_env(offline=True):
        captions = [f"caption {i}" for i in range(n)]
        ds = Dataset.from_dict({"image": cells, "caption": captions}, features=feats)
        ds.save_to_disk(str(root / "arrow"))
        ds.to_parquet(str(root / "data.parquet"))
    return root / "data.parquet", root / "arrow"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    from difflens.refsets.dataset_source import open_image_source
    from difflens.refsets.subset import draw_subset

    with tempfile.TemporaryDirectory() as tmp:
        parquet, arrow = _dataset(Path(tmp), args.n, args.size)
        print(f"{args.n} JPEG images {args.size + args.size // 4}x{args.size}, --reference-size {args.size}")
        for label, spec in (("parquet (streamed)", parquet), ("arrow (mapped)", arrow)):
            for workers in (1, None):
                src = open_image_source(str(spec), reference_size=args.size)
                t0 = time.perf_counter()
                n = sum(len(b) for b in src.iter_batches(50, workers=workers))
                dt = time.perf_counter() - t0
                print(f"  {label:20s} workers={workers or 'auto':4}: {n / dt:8.1f} img/s ({dt:.2f} s)")
        for total in (118_287, 591_753, 10_000_000):
            t0 = time.perf_counter()
            draw_subset(total, 30_000 if total > 30_000 else total // 2, seed=0)
            print(f"  subset of 30k rows out of {total:>10,}: {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
