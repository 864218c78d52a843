"""CPU cost per 1,000 images of each metric's network at full size (random weights, same architecture and
input size as the published weights), for the README's metric table.

Counts process CPU seconds (user + system, all threads) per image over a few images after one warm-up
batch: on a shared machine CPU time moves much less with the load than wall time does; on an idle machine
with T threads, wall time is about CPU time / T. Run by hand:

    .venv/bin/python benchmarks/measure_metric_costs.py [--images 4] [--threads 2] [--only inception,clip-l14]

Prints one JSON line per network: cpu_s_per_1000, wall_s_per_1000 (this run, under whatever load) and the
parameter count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

NETWORKS = {
    "inception": "FID/KID/IS/PR/DC, sfid, fid-inf, vendi (Inception-v3, 299 px)",
    "clip-b32": "fd-clip (CLIP ViT-B/32, 224 px)",
    "clip-l14": "clip (CLIP ViT-L/14, 224 px)",
    "clip-l14-336": "cmmd (CLIP ViT-L/14@336)",
    "dinov2-l14": "fd-dinov2 (DINOv2 ViT-L/14, 224 px)",
    "vit-h14": "hpsv2, pickscore (image tower of CLIP ViT-H/14, 224 px; the text tower adds a few %)",
}


def _vit(hidden: int, layers: int, heads: int, patch: int, size: int, proj: int) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, patch_size=patch, image_size=size,
                           projection_dim=proj)
    model = CLIPVisionModelWithProjection(cfg).eval()

    def run(x: Any) -> Any:
        return model(pixel_values=x).image_embeds

    return run, size, sum(p.numel() for p in model.parameters())


def _dinov2() -> Any:
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     patch_size=14, image_size=518)).eval()

    def run(x: Any) -> Any:
        return model(pixel_values=x).pooler_output

    return run, 224, sum(p.numel() for p in model.parameters())


def _inception(tmp: Path) -> Any:
    import numpy as np

    from difflens.metrics.inception import make_random_inception_weights, resolve_inception_weights
    from difflens.metrics.inception_fast import make_inception_extractor

    weights = resolve_inception_weights(make_random_inception_weights(tmp / "w.pth"), offline=True)
    ext = make_inception_extractor(weights, impl="reference")
    n_params = sum(p.numel() for p in ext.model.parameters())

    def run(x: Any) -> Any:  # uint8 256 px images through the tf-legacy resize, as difflens metrics does
        return ext([np.ascontiguousarray(im) for im in x])

    return run, 256, n_params


def measure(name: str, images: int, tmp: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    if name == "inception":
        run, size, n_params = _inception(tmp)
        batch: Any = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    else:
        run, size, n_params = {"clip-b32": lambda: _vit(768, 12, 12, 32, 224, 512),
                               "clip-l14": lambda: _vit(1024, 24, 16, 14, 224, 768),
                               "clip-l14-336": lambda: _vit(1024, 24, 16, 14, 336, 768),
                               "vit-h14": lambda: _vit(1280, 32, 16, 14, 224, 1024),
                               "dinov2-l14": _dinov2}[name]()
        batch = torch.randn(images, 3, size, size)
    with torch.inference_mode():
        run(batch[:1])  # warm-up
        c0, t0 = time.process_time(), time.perf_counter()
        run(batch)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"network": name, "serves": NETWORKS[name], "images": images, "params_m": round(n_params / 1e6, 1),
            "cpu_s_per_1000": round(cpu / images * 1000), "wall_s_per_1000": round(wall / images * 1000),
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=",".join(NETWORKS))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s.strip() for s in args.only.split(",") if s.strip()]:
            print(json.dumps(measure(name, args.images, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
