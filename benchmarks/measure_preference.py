"""Time per 1,000 images of the preference metrics' networks at full size (ViT-H-14, about 1B parameters),
with random weights (the real checkpoints are not downloaded; the cost does not depend on the values).

    python benchmarks/measure_preference.py --device cpu --n 4 --batch 2
    python benchmarks/measure_preference.py --device cuda --n 256 --batch 64 --dtype float16

For each of hpsv2 (open_clip ViT-H-14) and pickscore (transformers CLIPModel ViT-H-14): the per-image
preprocessing (``prepare``, which the extraction loop runs in reader threads) and the batched network pass
(``forward``: image tower, text tower, score) on 512x512 images with distinct prompts, one warm-up batch
first. Prints one JSON object; --json writes it too.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def _hpsv2(device: str, dtype: str) -> Any:
    import open_clip
    import torch

    from difflens.features.hpsv2 import Hpsv2, build_clip, tokenizer_for

    cfg = open_clip.get_model_config("ViT-H-14")
    with torch.device(device):  # random init on the device itself (fast on a GPU)
        model = build_clip(cfg).eval()
    return Hpsv2(model, tokenizer_for(cfg), arch="ViT-H-14", version="2.1", checkpoint_sha256="random",
                 device=device, dtype=dtype)


def _pickscore(device: str, dtype: str) -> Any:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from difflens.features.pickscore import PickScore
    from difflens.tiny_encoders import build_clip_tokenizer

    text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
    vision = dict(image_size=224, patch_size=14, hidden_size=1280, intermediate_size=5120,
                  num_hidden_layers=32, num_attention_heads=16, hidden_act="gelu", projection_dim=1024)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)
    with torch.device(device):
        model = CLIPModel(config).eval()
    # difflens's tiny CLIP tokenizer (offline; ids below the real vocabulary): the prompts' token counts
    # differ a little from the real tokenizer's, and the text tower is a small part of the cost
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=build_clip_tokenizer())
    return PickScore(model, processor, model_id="random ViT-H-14", processor_id="tiny tokenizer",
                     weights_sha256="random", device=device, dtype=dtype)


def _time(ext: Any, n: int, batch: int, device: str) -> dict[str, float]:
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(batch)]
    prompts = [f"a photo of object number {i} on a table, detailed, high quality" for i in range(batch)]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    prepared = [ext.prepare(im) for im in images]
    ext.forward(prepared, prompts=prompts)  # warm-up
    sync()
    t0 = time.perf_counter()
    prepared = [ext.prepare(im) for im in images]
    t_prep = (time.perf_counter() - t0) / batch
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    done, t0 = 0, time.perf_counter()
    while done < n:
        ext.forward(prepared, prompts=prompts)
        done += batch
    sync()
    t_fwd = (time.perf_counter() - t0) / done
    out = {"prepare_s_per_image": t_prep, "forward_s_per_image": t_fwd, "images_timed": done,
           "forward_s_per_1000": 1000 * t_fwd, "prepare_s_per_1000_one_thread": 1000 * t_prep}
    if device.startswith("cuda"):
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--n", type=int, default=4, help="images timed (rounded up to whole batches)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--metrics", default="hpsv2,pickscore")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "batch": args.batch,
                              "torch_threads": torch.get_num_threads(), "image": "512x512"}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    for name in args.metrics.split(","):
        t0 = time.perf_counter()
        ext = {"hpsv2": _hpsv2, "pickscore": _pickscore}[name](args.device, args.dtype)
        build = time.perf_counter() - t0
        result[name] = {"build_s": build, **_time(ext, args.n, args.batch, args.device)}
        del ext
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(json.dumps({name: result[name]}), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
