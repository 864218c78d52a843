"""The checks behind ``benchmarks/gpu_check.sh`` (run that; this file parses and runs the checks).

One line per check: ``PASS|FAIL|SKIP name: figure [seconds]``; exit 1 when any check failed. Every check
runs on random-init weights in the standard formats (nothing is downloaded; the device may be offline):

* ``env``: torch, CUDA, device name and memory.
* ``inception_u8``: Inception img/s from uint8 tensors, reference (torch-fidelity's module) and fast
  (folded batch-norm, channels-last) implementations; features on CUDA vs CPU (float32, TF32 off).
* ``inception_png``: ``extract_features`` over a folder of 256 px PNGs: img/s and whether decoding bounds it.
* ``clip`` / ``dinov2``: difflens's CLIP score / FD-DINOv2 on CUDA equal to CPU (tiny encoders), and the
  img/s of a full-size random ViT-L/14 image tower in float32 and float16.
* ``metrics_50k``: FID/KID/IS and precision/recall/density/coverage at 50k x 2048: k-NN on CUDA equal to
  the CPU counts exactly, FID/KID/IS timed.
* ``attention``: generation + attention capture (every check of ``run_attention``) on the tiny pipelines of
  every family and on the shapes-world pipelines when installed, in float16 and bfloat16.
* ``torchrun_nccl``: a one-process torchrun over NCCL: gathers and distributed k-NN equal to one process.

``--allow-cpu`` runs the same code on CPU (a dry run of the script itself; figures meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKS = ("env", "inception_u8", "inception_png", "clip", "dinov2", "metrics_50k", "attention",
          "torchrun_nccl")
ROOT = Path(__file__).resolve().parent.parent


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.device = "cuda" if not args.allow_cpu else "cpu"
        self.out = Path(args.out or tempfile.mkdtemp(prefix="difflens-gpu-check-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget_s
        self.shared: dict[str, Any] = {}

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="difflens GPU check (see benchmarks/gpu_check.sh)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(CHECKS)}")
    p.add_argument("--out", default=None, help="folder for the weights, PNGs and summary.json")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting checks after this many s")
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--validate-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only is not None:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in names if s not in CHECKS]
        if bad or not names:
            p.exit(2, f"gpu_check.sh: unknown check(s) {', '.join(bad) or '(none)'} in --only; fix: use "
                      f"some of {', '.join(CHECKS)}\n")
        args.only = names
    if args.budget_s <= 0:
        p.exit(2, f"gpu_check.sh: --budget-s must be positive, got {args.budget_s}; "
                  "fix: e.g. --budget-s 450\n")
    return args


def _rand_images(n: int, size: int, seed: int = 0) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    return [np.ascontiguousarray(np.roll(base[i % 8], i, axis=0)) for i in range(n)]


def _rel(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


# ------------------------------------------------------------------------------------------------- checks
def check_env(ctx: Ctx) -> tuple[str, str]:
    import torch

    if ctx.device == "cpu":
        return "PASS", f"torch {torch.__version__}, CPU dry run"
    p = torch.cuda.get_device_properties(0)
    return "PASS", (f"torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, "
                    f"{p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                    f"{torch.cuda.device_count()} GPU(s)")


def _weights(ctx: Ctx) -> Any:
    from difflens.metrics.inception import make_random_inception_weights, resolve_inception_weights

    if "weights" not in ctx.shared:
        path = make_random_inception_weights(ctx.out / "inception-random.pth")
        ctx.shared["weights"] = resolve_inception_weights(path)
    return ctx.shared["weights"]


def check_inception_u8(ctx: Ctx) -> tuple[str, str]:
    from difflens.metrics.inception_fast import make_inception_extractor

    w = _weights(ctx)
    n, bs = ctx.n(4096, 64), ctx.n(256, 32)
    imgs = _rand_images(n, 64)
    cpu_ref = make_inception_extractor(w, "cpu", impl="reference")(imgs[:8])[0]
    parts, worst = [], 0.0
    for impl in ("reference", "fast"):
        ext = make_inception_extractor(w, ctx.device, impl=impl)
        feats = ext(imgs[:8])[0]
        worst = max(worst, _rel(cpu_ref, feats))
        ext(imgs[:bs])
        ctx.sync()
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            ext(imgs[i:i + bs])
        ctx.sync()
        rate = n / (time.perf_counter() - t0)
        ctx.shared[f"u8_rate_{impl}"] = rate
        parts.append(f"{impl} {rate:.0f} img/s")
    ok = worst <= 1e-4
    return ("PASS" if ok else "FAIL"), (f"{', '.join(parts)} (batch {bs}, 64 px -> 299); pool3 {ctx.device} "
                                       f"vs CPU reference max rel {worst:.1e} (tolerance 1e-4)")


def check_inception_png(ctx: Ctx) -> tuple[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from difflens.metrics.extract import extract_features
    from difflens.metrics.inception_fast import make_inception_extractor
    from difflens.metrics.sources import FolderSource

    n = ctx.n(2000, 64)
    folder = ctx.out / "pngs"
    folder.mkdir(exist_ok=True)
    imgs = _rand_images(n, 256, seed=1)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: Image.fromarray(imgs[i]).save(folder / f"{i:05d}.png"), range(n)))
    files = sorted(folder.glob("*.png"))
    ext = make_inception_extractor(_weights(ctx), ctx.device, impl="fast")
    extract_features(FolderSource(files=files[:32]), ext, batch_size=32, show_progress=False)
    t0 = time.perf_counter()
    got = extract_features(FolderSource(files=files), ext, batch_size=200, show_progress=False)
    rate = got.n / (time.perf_counter() - t0)
    u8 = ctx.shared.get("u8_rate_fast")
    bound = "" if u8 is None else (f"; {rate / u8:.2f}x the uint8 rate: "
                                   f"{'decode-bound' if rate < 0.8 * u8 else 'compute-bound'}")
    ok = got.n == n
    return ("PASS" if ok else "FAIL"), f"{rate:.0f} img/s over {got.n}/{n} PNGs of 256 px (fast impl){bound}"


def _vit_rate(ctx: Ctx, kind: str) -> str:
    import torch

    n, bs = ctx.n(1024, 16), ctx.n(128, 8)
    layers = ctx.n(24, 2)   # quick: a smaller tower; the dry run checks the code, not the figure
    if kind == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        model = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=768))
    else:
        from transformers import Dinov2Config, Dinov2Model

        model = Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                                         patch_size=14, image_size=224))
    out = []
    for dtype in (torch.float32, torch.float16):
        if ctx.device == "cpu" and dtype == torch.float16:
            continue
        m = model.to(ctx.device, dtype).eval()
        x = torch.randint(0, 256, (bs, 3, 224, 224), dtype=torch.uint8, device=ctx.device)
        with torch.inference_mode():
            m(pixel_values=(x.to(dtype) / 255 - 0.45) / 0.27)
            ctx.sync()
            t0 = time.perf_counter()
            for _ in range(0, n, bs):
                m(pixel_values=(x.to(dtype) / 255 - 0.45) / 0.27)
            ctx.sync()
        out.append(f"{str(dtype).replace('torch.', '')} {n / (time.perf_counter() - t0):.0f} img/s")
    return f"random ViT-L/14 {kind} tower{' (2 layers, quick)' if ctx.quick else ''}: {', '.join(out)}"


def check_clip(ctx: Ctx) -> tuple[str, str]:
    from difflens.metrics.clip import compute_clip_score
    from difflens.tiny_encoders import save_tiny_clip

    folder = save_tiny_clip(ctx.out / "tiny-clip")
    imgs = _rand_images(32, 64, seed=2)
    prompts = [f"a photo of a cat {i}" for i in range(32)]
    a = compute_clip_score(imgs, prompts, clip_model=str(folder), device="cpu").value
    b = compute_clip_score(imgs, prompts, clip_model=str(folder), device=ctx.device).value
    ok = abs(a - b) <= 1e-3
    return ("PASS" if ok else "FAIL"), (f"CLIP score {ctx.device} {b:.5f} vs CPU {a:.5f} (|diff| <= 1e-3); "
                                       f"{_vit_rate(ctx, 'clip')}")


def check_dinov2(ctx: Ctx) -> tuple[str, str]:
    from difflens.metrics.dinov2 import compute_fd_dinov2
    from difflens.tiny_encoders import save_tiny_dinov2

    folder = save_tiny_dinov2(ctx.out / "tiny-dinov2")
    real, fake = _rand_images(24, 64, seed=3), _rand_images(24, 64, seed=4)
    a = compute_fd_dinov2(real, fake, dinov2_model=str(folder), device="cpu").value
    b = compute_fd_dinov2(real, fake, dinov2_model=str(folder), device=ctx.device).value
    ok = abs(a - b) <= 1e-4 * max(abs(a), 1e-3)
    return ("PASS" if ok else "FAIL"), (f"FD-DINOv2 {ctx.device} {b:.6g} vs CPU {a:.6g} (rel 1e-4); "
                                       f"{_vit_rate(ctx, 'dinov2')}")


def check_metrics_50k(ctx: Ctx) -> tuple[str, str]:
    import numpy as np

    from difflens.metrics.fid import fid_from_stats
    from difflens.metrics.inception_score import inception_score
    from difflens.metrics.kid import kernel_inception_distance
    from difflens.metrics.knn.compute import prdc
    from difflens.metrics.stats import GaussianStats

    n, d = ctx.n(50_000, 2_000), 2048
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((64, d)).astype(np.float32)
    real = (rng.standard_normal((n, 64)).astype(np.float32) @ mix) / 8
    fake = ((rng.standard_normal((n, 64)).astype(np.float32) * 1.1 + 0.05) @ mix) / 8
    logits = rng.standard_normal((n, 1008)).astype(np.float32) * 3
    t0 = time.perf_counter()
    fid = fid_from_stats(GaussianStats.from_features(real), GaussianStats.from_features(fake))
    kid = kernel_inception_distance(real, fake)
    is_mean, _ = inception_score(logits)
    t_cpu_math = time.perf_counter() - t0
    t0 = time.perf_counter()
    gpu = prdc(real, fake, device=ctx.device)
    t_gpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu = prdc(real, fake, device="cpu")
    t_cpu = time.perf_counter() - t0
    same = all(gpu[k] == cpu[k] for k in cpu)
    vals = ", ".join(f"{k} {v:.4f}" for k, v in gpu.items())
    return ("PASS" if same else "FAIL"), (
        f"{n} x {d}: PR/DC on {ctx.device} {t_gpu:.1f} s vs CPU {t_cpu:.1f} s, counts "
        f"{'identical' if same else 'DIFFER: ' + json.dumps(cpu)} ({vals}); FID {fid:.4f}, KID "
        f"{kid.value:.5f}, IS {is_mean:.3f} in {t_cpu_math:.1f} s")


def check_attention(ctx: Ctx) -> tuple[str, str]:
    import torch

    from difflens.attention.api import AttentionConfig, run_attention
    from difflens.tiny.pipelines import build_tiny_pipeline

    pipes: list[tuple[str, Callable[[], Any]]] = [
        (f, lambda f=f: build_tiny_pipeline(f)) for f in ("sd15", "sdxl", "sd3", "flux", "pixart")]
    try:
        from diffusers import DiffusionPipeline

        from difflens.shapes.models import pretrained

        for fam in ("unet", "mmdit"):
            folder = pretrained(fam)  # type: ignore[arg-type]
            if Path(folder).is_dir():
                pipes.append((f"shapes-{fam}",
                              lambda folder=folder: DiffusionPipeline.from_pretrained(folder)))
    except Exception as exc:  # the shapes-world models may not be installed yet
        print(f"SKIP attention[shapes-world]: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    dtypes = (torch.float16, torch.bfloat16) if ctx.device == "cuda" else (torch.float32,)
    failed, parts = [], []
    for name, build in pipes:
        for dtype in dtypes:
            pipe = build().to(ctx.device, dtype)
            t5 = name in ("sd3", "flux", "pixart") or name == "shapes-mmdit"
            cfg = AttentionConfig(model=name, prompt="a red circle above a blue square", steps=4, height=64,
                                  width=64, image_check=True, max_sequence_length=32 if t5 else None)
            t0 = time.perf_counter()
            res = run_attention(cfg, pipe)
            bad = [c["name"] for c in res.checks if not c.get("ok", False)]
            tag = f"{name}/{str(dtype).replace('torch.', '')}"
            if bad:
                failed.append(f"{tag}: {','.join(bad)}")
            ratio = res.record["seconds"].get("capture_overhead_ratio", float("nan"))
            parts.append(f"{tag} {time.perf_counter() - t0:.1f}s x{ratio:.2f}")
    text = f"{len(parts)} runs ({'; '.join(parts)})"
    return ("FAIL", f"checks failed: {'; '.join(failed)}; {text}") if failed else ("PASS", text)


_NCCL_SCRIPT = r'''
import json, sys
import numpy as np
from difflens.distributed.context import distributed_session
from difflens.distributed.collectives import all_gather_array
from difflens.metrics.knn.compute import distributed_prdc, prdc
rng = np.random.default_rng(0)
real = rng.standard_normal((3000, 64)).astype(np.float32)
fake = (rng.standard_normal((2500, 64)) * 1.1).astype(np.float32)
with distributed_session(device=sys.argv[2], backend=sys.argv[3]) as ctx:
    got = all_gather_array(np.arange(5, dtype=np.int64) + ctx.rank, ctx)
    dist = distributed_prdc(real, fake, ctx=ctx)
one = prdc(real, fake, device=sys.argv[2])
json.dump({"gather_ok": bool(np.array_equal(got, np.arange(5))), "equal": dist == one, "values": dist},
          open(sys.argv[1], "w"))
'''


def check_torchrun_nccl(ctx: Ctx) -> tuple[str, str]:
    script = ctx.out / "nccl_check.py"
    script.write_text(_NCCL_SCRIPT, encoding="utf-8")
    result = ctx.out / "nccl_check.json"
    backend = "nccl" if ctx.device == "cuda" else "gloo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone",
           str(script), str(result), ctx.device, backend]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=str(ROOT),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])})
    dt = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return "FAIL", f"torchrun exit {proc.returncode}: {tail[0][:200]}"
    data = json.loads(result.read_text(encoding="utf-8"))
    ok = data["gather_ok"] and data["equal"]
    return ("PASS" if ok else "FAIL"), (f"1-process torchrun over {backend.upper()} in {dt:.1f} s: "
                                       f"all_gather {'ok' if data['gather_ok'] else 'WRONG'}, "
                                       f"distributed k-NN {'equal to' if data['equal'] else 'DIFFERS from'} "
                                       "one process")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.validate_only:
        return 0
    import torch

    if not args.allow_cpu and not torch.cuda.is_available():
        print("SKIP: no GPU (torch.cuda.is_available() is False on this machine); nothing was run (exit 3)")
        return 3
    ctx = Ctx(args)
    fns: dict[str, Callable[[Ctx], tuple[str, str]]] = {name: globals()[f"check_{name}"] for name in CHECKS}
    summary: dict[str, Any] = {}
    for name in args.only or CHECKS:
        if time.monotonic() > ctx.deadline:
            status, text, dt = "SKIP", f"time budget of {args.budget_s:.0f} s spent", 0.0
        else:
            t0 = time.perf_counter()
            try:
                status, text = fns[name](ctx)
            except Exception as exc:  # one failing check must not hide the others
                status, text = "FAIL", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            dt = time.perf_counter() - t0
        print(f"{status} {name}: {text} [{dt:.1f}s]", flush=True)
        summary[name] = {"status": status, "text": text, "seconds": round(dt, 2)}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    failed = [k for k, v in summary.items() if v["status"] == "FAIL"]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'ALL PASSED'} ({len(summary)} checks; "
          f"summary in {ctx.out / 'summary.json'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
