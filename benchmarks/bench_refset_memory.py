"""Peak memory of building reference statistics from a parquet dataset (``difflens stats build``): flat in
the number of images, since the dataset is streamed through the one extraction loop and only the Gaussian
statistics are kept (no ``--keep-features``).

For each size N the benchmark writes a parquet file of N JPEG images (``--size`` px, 64 distinct rendered
scenes with per-image noise), then builds the statistics in a fresh child process and reports that
process's peak RSS (``VmHWM``) and its RSS sampled along the way. ``--extractor inception`` runs the FID
Inception with random-init weights (the same network and cost as the real weights); ``--extractor
stand-in`` registers a cheap 2048-d extractor (a fixed random projection of 8x8 block means), so the
decode/stream/statistics pipeline can be measured at 20k and 40k images on a slow CPU.

Run by hand: ``.venv/bin/python benchmarks/bench_refset_memory.py --n 2000 4000 [--extractor inception]
[--size 256] [--batch-size 16] [--keep]``. Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS_PER_GROUP = 500


def write_parquet(path: Path, n: int, size: int, seed: int = 0) -> Path:
    """n JPEG images (size x size) in a parquet file with an ``image`` column in the datasets Image layout,
    written row group by row group (the writer never holds more than one group)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bases = []
    for _ in range(64):  # smooth colour fields with a few discs: rendered scenes, compressible like photos
        c = rng.uniform(0, 255, (3, 3))
        img = c[0] * xx[..., None] + c[1] * yy[..., None] + c[2] * (1 - xx[..., None])
        for _ in range(3):
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        bases.append(img / 2)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type)],
                       metadata={"huggingface": json.dumps({"info": {"features": {
                           "image": {"_type": "Image"}}}})})
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, ROWS_PER_GROUP):
            cells = []
            for i in range(start, min(n, start + ROWS_PER_GROUP)):
                noise = rng.normal(0, 12, (size, size, 3))
                arr = np.clip(bases[i % len(bases)] + 60 * (i % 7) / 7 + noise, 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                cells.append({"bytes": buf.getvalue(), "path": None})
            writer.write_table(pa.table({"image": pa.array(cells, type=image_type)}, schema=schema))
    return path


CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")

samples = []
stop = threading.Event()
def sample():
    t0 = time.perf_counter()
    while not stop.wait(1.0):
        samples.append((round(time.perf_counter() - t0, 1), round(rss_mb("VmRSS:"), 1)))
        every = json.loads(sys.argv[1]).get("print_every", 0)
        if every and len(samples) % every == 0:  # progress that survives a killed run
            t, rss = samples[-1]
            print(f"# t={t} s rss={rss} MB peak={rss_mb('VmHWM:'):.1f} MB", flush=True)
threading.Thread(target=sample, daemon=True).start()

args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
from difflens.refsets.build_stats import build_reference_stats
weights = args["weights"]
if args["extractor"] == "stand-in":
    import numpy as np
    from difflens.features import inception as inception_mod
    from difflens.features.base import ExtractorBase
    proj = np.random.default_rng(0).standard_normal((8 * 8 * 3, 2048)).astype(np.float32)

    class StandIn(ExtractorBase):
        # the Inception adapter's interface with a cheap network: 8x8 block means -> 2048-d projection
        layers = ("pool3", "logits")
        def __init__(self, real):
            self.real, self.name, self.device = real, real.name, "cpu"
            self.weights = real.weights
        def preprocessing(self):
            return {"stand-in": True}
        def fingerprint(self, layer="pool3"):
            return self.real.fingerprint(layer)
        def forward(self, prepared):
            x = np.stack(prepared).astype(np.float32)
            n, h, w, _ = x.shape
            blocks = x.reshape(n, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4)).reshape(n, -1)
            return {"pool3": blocks @ proj, "logits": np.zeros((n, 1008), np.float32)}

    real_load = inception_mod.load_inception
    inception_mod.load_inception = lambda *a, **k: StandIn(real_load(*a, **k))
t0 = time.perf_counter()
res = build_reference_stats(args["spec"], args["out"], inception_weights=weights,
                            batch_size=args["batch_size"], show_progress=False, offline=True)
seconds = time.perf_counter() - t0
stop.set()
print(json.dumps({"n": res.n, "seconds": round(seconds, 1), "images_per_s": round(res.n / seconds, 2),
                  "peak_rss_mb": round(rss_mb("VmHWM:"), 1), "final_rss_mb": round(rss_mb("VmRSS:"), 1),
                  "rss_samples": samples[:: max(1, len(samples) // 12)]}))
"""


def measure(spec: Path, out: Path, weights: Path, extractor: str, batch_size: int,
            threads: int, print_every: int = 0) -> dict[str, Any]:
    args = {"spec": str(spec), "out": str(out), "weights": str(weights), "extractor": extractor,
            "batch_size": batch_size, "threads": threads, "print_every": print_every}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DIFFLENS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # progress lines (--print-every) are passed through as they come
        if line.startswith("# "):
            print(line.rstrip(), flush=True)
        lines.append(line)
    err = proc.stderr.read() if proc.stderr is not None else ""
    if proc.wait() != 0:
        raise SystemExit(err[-3000:])
    return json.loads(lines[-1])


def write_parts(folder: Path, n: int, size: int, procs: int) -> Path:
    """``n`` images as ``procs`` parquet files written in parallel (a folder is a parquet dataset spec)."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    counts = [n // procs + (i < n % procs) for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(write_parquet, [folder / f"part-{i:02d}.parquet" for i in range(procs)], counts,
                      [size] * procs, range(procs)))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extractor", choices=("inception", "stand-in"), default="inception")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the parquet files")
    parser.add_argument("--write-procs", type=int, default=1,
                        help="write the dataset as this many parquet files in parallel (a folder)")
    parser.add_argument("--print-every", type=int, default=0, help="print RSS every S seconds while running")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="difflens-refmem-"))
    root.mkdir(parents=True, exist_ok=True)
    weights = root / "inception-random.pth"
    if not weights.exists():  # made here, so the measured child only loads them (as a real run does)
        from difflens.features.inception_weights import make_random_inception_weights

        make_random_inception_weights(weights)
    for n in args.n:
        spec = root / (f"refs-{n}-{args.size}px" + ("" if args.write_procs > 1 else ".parquet"))
        if not spec.exists():
            t0 = time.perf_counter()
            if args.write_procs > 1:
                write_parts(spec, n, args.size, args.write_procs)
            else:
                write_parquet(spec, n, args.size)
            size_mb = sum(f.stat().st_size for f in ([spec] if spec.is_file() else spec.iterdir())) / 1e6
            print(f"# wrote {spec} ({size_mb:.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
        res = measure(spec, root / f"stats-{n}.npz", weights, args.extractor, args.batch_size, args.threads,
                      args.print_every)
        print(json.dumps({"extractor": args.extractor, "size": args.size, "batch_size": args.batch_size,
                          **res}), flush=True)
        if not args.keep:
            import shutil

            shutil.rmtree(spec) if spec.is_dir() else spec.unlink()


if __name__ == "__main__":
    main()
