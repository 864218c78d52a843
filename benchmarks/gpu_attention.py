"""Attention capture on CUDA: which route each layer takes, maps vs the replay route, and the overhead.

For every tiny family (SD 1.x, SDXL, SD3, Flux, PixArt) and the shipped shapes-world pipelines, in float16
and bfloat16 (float32 with ``--device cpu``, a dry run of this script):

1. correctness: one capture by the log-sum-exp route (``route="auto"``) and one by the replay route; per
   layer the route taken, the kernel tapped and any fallback reason; max |auto maps - replay maps| over
   every aggregate; whether the captured image equals the plain one bit for bit;
2. time: untimed warm-up runs (plain, auto, replay) first, then ``--repeats`` interleaved plain / auto /
   replay generations (CUDA synchronized around each), medians and the ratios to plain.

One JSON line per (pipeline, dtype) in ``--out/gpu_attention.jsonl`` and a table on stdout. Stops starting new
pipelines once ``--budget-s`` is spent (results so far are kept).

    python benchmarks/gpu_attention.py --out /tmp/ga --budget-s 300
    .venv/bin/python benchmarks/gpu_attention.py --device cpu --families sd15 --steps 2 --repeats 1  # dry run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import _captured, _map_difference

T5_LIKE = ("sd3", "flux", "pixart", "shapes-mmdit")


def _build(name: str) -> Any:
    if name.startswith("shapes-"):
        from diffusers import DiffusionPipeline

        from difflens.shapes.models import pretrained

        return DiffusionPipeline.from_pretrained(pretrained(name.split("-", 1)[1]))  # type: ignore[arg-type]
    from difflens.tiny.pipelines import build_tiny_pipeline

    return build_tiny_pipeline(name)


def _plan(name: str, pipe: Any, steps: int, size: int) -> Any:
    from difflens.attention.api import AttentionConfig, plan_attention

    cfg = AttentionConfig(model=name, prompt="a red circle above a blue square", steps=steps, height=size,
                          width=size, stride=1, image_check=False,
                          max_sequence_length=32 if name in T5_LIKE else None)
    return plan_attention(cfg, pipe)


def _image(plan: Any, seed: int = 0) -> Any:
    import numpy as np
    import torch

    with torch.no_grad():
        out = plan.pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    return np.asarray(out.images[0])


def _timed(fn: Any, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _layers(cap: Any) -> list[dict[str, Any]]:
    return [{"name": i.name, "kind": i.kind, "route": i.route, "backend": i.backend, "lse_error": i.lse_error,
             "lse_drift": i.lse_drift, "sum_error": i.sum_error, "fallback_reason": i.fallback_reason}
            for i in cap.info]


def run_one(name: str, dtype_name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from difflens.attention.aggregate import OnlineAggregator
    from difflens.attention.capture import AttentionCapture

    dtype = getattr(torch, dtype_name)
    pipe = _build(name).to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    plan = _plan(name, pipe, args.steps, args.size)
    row: dict[str, Any] = {"pipeline": name, "dtype": dtype_name, "steps": args.steps, "size": args.size}

    # 1. correctness: routes, maps, image
    plain_img = _image(plan)
    caps = {}
    results = {}
    for route in ("auto", "replay"):
        agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, 1, [la.name for la in plan.layers],
                               plan.joint, plan.groups, device=plan.denoiser.device)
        cap = AttentionCapture(plan.pipe, plan.denoiser, plan.layers, [t.key for t in plan.tokens],
                               plan.prompt_tokens.text_len, plan.latent_hw, agg, route=route)  # type: ignore[arg-type]
        with cap:
            img = _image(plan)
        caps[route], results[route] = cap, agg.result()
        row[f"image_equal_{route}"] = bool(np.array_equal(img, plain_img))
    row["layers"] = _layers(caps["auto"])
    row["routes"] = sorted({i.route for i in caps["auto"].info})
    row["backends"] = sorted({str(i.backend) for i in caps["auto"].info})
    row["max_lse_error"] = max((i.lse_error for i in caps["auto"].info if i.lse_error is not None),
                               default=None)
    row["map_diff_auto_vs_replay"] = _map_difference(results["auto"], results["replay"])
    row["sum_error_max"] = max((i.sum_error or 0.0) for i in caps["auto"].info)

    # 2. time: warm-up, then interleaved repeats
    for _ in range(args.warmup):
        _timed(lambda p=plan: _image(p), args.device)
        _captured(plan, 1, route="auto")
        _captured(plan, 1, route="replay")
    times: dict[str, list[float]] = {"plain": [], "auto": [], "replay": []}
    for _ in range(args.repeats):
        times["plain"].append(_timed(lambda p=plan: _image(p), args.device))
        times["auto"].append(_captured(plan, 1, route="auto")[0][0])
        times["replay"].append(_captured(plan, 1, route="replay")[0][0])
    med = {k: statistics.median(v) for k, v in times.items()}
    row["median_s"] = med
    row["ratio_auto"] = med["auto"] / med["plain"]
    row["ratio_replay"] = med["replay"] / med["plain"]
    row["times_s"] = times
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def kernel_probe(device: str) -> list[dict[str, Any]]:
    """The tap on one ``F.scaled_dot_product_attention`` call per backend (forced with ``sdpa_kernel``),
    dtype, head dim and mask kind: the kernel tapped, output bit-equal to the real call, and the lse vs
    torch.logsumexp of the float32 scores (or why the tap did not apply)."""
    import math

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from difflens.attention.lse import SdpaTap

    rows = []
    backends = ((SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)
                if device == "cuda" else (SDPBackend.FLASH_ATTENTION,))
    dtypes = (torch.float16, torch.bfloat16) if device == "cuda" else (torch.float32,)
    g = torch.Generator(device).manual_seed(0)
    for backend in backends:
        for dtype in dtypes:
            for d in (12, 64):
                for mask_kind in ("none", "additive", "bool"):
                    q, k, v = (torch.randn(2, 3, 77, d, device=device, dtype=dtype, generator=g)
                               for _ in range(3))
                    mask = None
                    if mask_kind == "additive":
                        mask = torch.randn(2, 1, 77, 77, device=device, generator=g).to(dtype)
                    elif mask_kind == "bool":
                        mask = torch.rand(2, 1, 1, 77, device=device, generator=g) > 0.3
                        mask[..., 0] = True
                    row: dict[str, Any] = {"backend": backend.name, "dtype": str(dtype).replace("torch.", ""),
                                           "head_dim": d, "mask": mask_kind}
                    try:
                        with sdpa_kernel([backend]), torch.no_grad():
                            tap = SdpaTap(verify=True)
                            tap.handle(F.scaled_dot_product_attention, (q, k, v), {"attn_mask": mask})
                        rec = tap.record
                        row["tapped"] = None if rec is None else rec.backend
                        row["reason"] = tap.reason
                        if rec is not None:
                            row["output_equal"] = rec.output_equal
                            s = q.float() @ k.float().transpose(-1, -2) / math.sqrt(d)
                            if mask is not None:
                                s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
                                    else s + mask.float()
                            row["lse_max_abs_err"] = float((rec.lse - torch.logsumexp(s, -1)).abs().max())
                    except Exception as exc:  # a backend that does not take these inputs
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                    rows.append(row)
                    print("probe", json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="sd15,sdxl,sd3,flux,pixart,shapes-unet,shapes-mmdit")
    p.add_argument("--dtypes", default=None, help="default: float16,bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no GPU (torch.cuda.is_available() is False)")
        return 3
    dtypes = (args.dtypes or ("float16,bfloat16" if args.device == "cuda" else "float32")).split(",")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"}
    print(json.dumps(env))
    if args.device == "cuda":
        from torch.nn.attention import SDPBackend

        q = torch.randn(2, 4, 64, 16, device="cuda", dtype=torch.float16)
        m = torch.zeros(2, 1, 64, 64, device="cuda", dtype=torch.float16)
        for dt in (torch.float16, torch.bfloat16):
            c0 = torch._fused_sdp_choice(q.to(dt), q.to(dt), q.to(dt))
            c1 = torch._fused_sdp_choice(q.to(dt), q.to(dt), q.to(dt), m.to(dt))
            print(f"_fused_sdp_choice {dt}: no mask {SDPBackend(c0).name}, "
                  f"additive mask {SDPBackend(c1).name}")
    deadline = time.monotonic() + args.budget_s
    probe = kernel_probe(args.device)
    if out is not None:
        (out / "kernel_probe.json").write_text(json.dumps(probe, indent=1) + "\n", encoding="utf-8")
    print(f"{'pipeline':13s} {'dtype':8s} {'routes':10s} {'backends':18s} {'max|auto-replay|':>16s} "
          f"{'lse_err':>8s} {'img=':>5s} {'plain s':>8s} {'auto/plain':>10s} {'replay/plain':>12s}")
    failed = 0
    for name in args.families.split(","):
        for dtype_name in dtypes:
            if time.monotonic() > deadline:
                print(f"SKIP {name}/{dtype_name}: budget of {args.budget_s:.0f} s spent")
                continue
            t0 = time.perf_counter()
            try:
                row = run_one(name, dtype_name, args)
            except Exception as exc:  # one pipeline failing must not hide the others
                failed += 1
                print(f"FAIL {name}/{dtype_name}: {type(exc).__name__}: {str(exc)[:300]}")
                traceback.print_exc(limit=4)
                row = {"pipeline": name, "dtype": dtype_name, "error": f"{type(exc).__name__}: {exc}"}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if "error" not in row:
                lse = row["max_lse_error"]
                print(f"{name:13s} {dtype_name:8s} {','.join(row['routes']):10s} "
                      f"{','.join(row['backends']):18s} {row['map_diff_auto_vs_replay']:16.2e} "
                      f"{(lse if lse is not None else float('nan')):8.1e} "
                      f"{'yes' if row['image_equal_auto'] else 'NO':>5s} {row['median_s']['plain']:8.4f} "
                      f"{row['ratio_auto']:9.3f}x {row['ratio_replay']:11.3f}x", flush=True)
                reasons = sorted({la["fallback_reason"] for la in row["layers"] if la["fallback_reason"]})
                for r in reasons:
                    print(f"    fallback: {r}")
            if out is not None:
                with open(out / "gpu_attention.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
