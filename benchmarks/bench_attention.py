"""Benchmark the attention capture on tiny random pipelines (run by hand; prints figures).

1. Time: one generation without capture vs with capture (all cross/joint layers, every step, and the
   aggregator's ``result()``) by the log-sum-exp route (``route="auto"``: the kernel's own log-sum-exp, no
   second pass) and by the replay route (``route="replay"``: a second attention pass over all keys), each
   captured run timed between two plain runs and divided by their mean (A-B-A, robust to a drifting shared
   machine), medians of those ratios, and the best-of ratios (fastest captured run / fastest plain run:
   interference only slows a run down); and the largest difference between the two routes' maps (goal:
   1e-6). Goal: at most 1.10x the plain time.
2. Memory: bytes the capture holds (aggregator tensors, exact) and its largest transient chunk, at two
   step counts; with a stride >= steps (one kept per-step map) these must not depend on the step count;
   with stride 1 only the per-step maps grow, by exactly steps x tokens x h x w x 4 bytes. On CUDA the
   peak allocated memory during the captured generation minus the plain one is printed too.

    .venv/bin/python benchmarks/bench_attention.py --families sd15,sdxl,sd3,flux,pixart --steps 20 --size 64
    .venv/bin/python benchmarks/bench_attention.py --families shapes-unet,shapes-mmdit --steps 20
    .venv/bin/python benchmarks/bench_attention.py --families sd3,flux --wide --size 128 --steps 10

``--wide`` swaps in wider SD3/Flux transformers (4 heads x 64, more blocks): attention is a smaller share of
the work there than in the tiny ones, as in real models. ``--compare-rev REV`` also times the capture of
``src/difflens/attention`` as it was at git revision REV (loaded beside the current one as
``difflens.attention_rev``, same pipelines and plan), interleaved with the others, for before/after figures
from one run on a loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def _widen(family: str, pipe: Any) -> Any:
    """Replace the tiny SD3/Flux transformer by a wider random one (same text widths)."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if family == "sd3":
        pipe.transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=4,
            attention_head_dim=64, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=256,
            pooled_projection_dim=64, pos_embed_max_size=64).eval()
    elif family == "flux":
        pipe.transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=64,
            num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(16, 24, 24)).eval()
    return pipe


def _pipeline(family: str) -> Any:
    """A tiny random pipeline, or for ``shapes-unet`` / ``shapes-mmdit`` the shipped shapes-world model."""
    if family.startswith("shapes-"):
        from difflens.models import load_pipeline
        from difflens.shapes import pretrained

        return load_pipeline(pretrained(family.removeprefix("shapes-")), "float32", "cpu", offline=True)
    from difflens.tiny.pipelines import build_tiny_pipeline

    return build_tiny_pipeline(family)


def _plan(family: str, pipe: Any, steps: int, size: int, stride: int) -> Any:
    from difflens.attention.api import AttentionConfig, plan_attention

    if family.startswith("shapes-"):   # the shapes world's own vocabulary; its pipelines' defaults otherwise
        from difflens.shapes import pretrained

        cfg = AttentionConfig(model=pretrained(family.removeprefix("shapes-")),
                              prompt="a red circle and a blue square", steps=steps, height=64, width=64,
                              stride=stride, image_check=False)
        return plan_attention(cfg, pipe)
    cfg = AttentionConfig(model=family, prompt="a photo of a cat sitting on a red bench", steps=steps,
                          height=size, width=size, stride=stride, image_check=False,
                          max_sequence_length=32 if family in ("sd3", "flux", "pixart") else None)
    return plan_attention(cfg, pipe)


def _clock() -> tuple[float, float]:
    """(wall, process CPU) seconds; CPU time is the steadier figure on a shared machine."""
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    t1 = _clock()
    return t1[0] - t0[0], t1[1] - t0[1]


def _plain(plan: Any, seed: int = 0) -> tuple[float, float]:
    import torch

    t0 = _clock()
    with torch.no_grad():
        plan.pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    _sync(plan)
    return _since(t0)


def _load_rev(rev: str) -> Any:
    """``src/difflens/attention`` at git revision ``rev`` as the package ``difflens.attention_rev``."""
    import importlib.util
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/difflens/attention/"], cwd=root,
                           check=True, capture_output=True, text=True).stdout.split()
    folder = Path(tempfile.mkdtemp(prefix="difflens-attention-rev-"))
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=root, check=True, capture_output=True,
                                  text=True).stdout
            text = text.replace("difflens.attention.", "difflens.attention_rev.")
            (folder / Path(name).name).write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("difflens.attention_rev", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["difflens.attention_rev"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    import importlib

    return (importlib.import_module("difflens.attention_rev.aggregate").OnlineAggregator,
            importlib.import_module("difflens.attention_rev.capture").AttentionCapture)


def _captured(plan: Any, stride: int, seed: int = 0, route: str = "auto",
              classes: Any = None) -> tuple[tuple[float, float], Any]:
    import torch

    from difflens.attention.aggregate import OnlineAggregator
    from difflens.attention.capture import AttentionCapture

    if classes is not None:
        OnlineAggregator, AttentionCapture = classes

    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, stride, [la.name for la in plan.layers],
                           plan.joint, plan.groups, device=plan.denoiser.device)
    cap = AttentionCapture(plan.pipe, plan.denoiser, plan.layers, [t.key for t in plan.tokens],
                           plan.prompt_tokens.text_len, plan.latent_hw, agg, route=route)
    t0 = _clock()
    with cap, torch.no_grad():
        plan.pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    result = agg.result()        # timed too: it closes the last steps and measures them
    _sync(plan)
    dt = _since(t0)
    return dt, {"stored": result.stored_bytes, "transient": cap.stats.peak_transient_bytes,
                "steps": cap.stats.steps, "tokens": len(plan.tokens), "result": result,
                "routes": sorted({i.route for i in cap.info})}


def aba_ratios(plan: Any, variants: list[tuple[str, Any]], repeats: int) -> tuple[
        dict[str, list[tuple[float, float]]], dict[str, list[float]], list[tuple[float, float]]]:
    """A-B-A pairing: every run of a variant (name, callable returning (wall, CPU) seconds) sits between two
    plain runs and is divided by their mean, so a machine whose speed drifts (shared CPUs) moves both sides of
    each ratio. Returns per variant its (wall, CPU) ratios and its wall times, and every plain (wall, CPU)."""
    ratios: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    walls: dict[str, list[float]] = {name: [] for name, _ in variants}
    plains = [_plain(plan)]
    for _ in range(repeats):
        for name, run in variants:
            t = run()
            walls[name].append(t[0])
            plains.append(_plain(plan))
            (aw, ac), (bw, bc) = plains[-2], plains[-1]
            ratios[name].append((t[0] / ((aw + bw) / 2), t[1] / ((ac + bc) / 2)))
    return ratios, walls, plains


def _map_difference(a: Any, b: Any) -> float:
    """Largest |difference| over every map the two aggregates hold."""
    import numpy as np

    names = ("maps", "per_step", "text_mass", "maps_text_renorm", "text_mass_per_step")
    pairs = [(getattr(a, n), getattr(b, n)) for n in names if getattr(a, n, None) is not None]
    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()) for x, y in pairs
               if np.asarray(x).size)


def _sync(plan: Any) -> None:
    import torch

    if plan.denoiser.device.type == "cuda":
        torch.cuda.synchronize()


def _cuda_peak(fn: Any) -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="sd15,sdxl,sd3,flux,pixart")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--memory-steps", default="10,40", help="two step counts for the memory figures")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier timings)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--wide", action="store_true", help="wider SD3/Flux transformers (see above)")
    parser.add_argument("--compare-rev", default=None, help="also time the capture at this git revision")
    args = parser.parse_args()
    rev = _load_rev(args.compare_rev) if args.compare_rev else None

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
          f"{args.size}x{args.size}, {args.repeats} interleaved repeats (median)")
    print(f"{'family':8s} {'steps':>5s} {'plain':>8s} {'lse':>8s} {'replay':>8s} {'lse/plain':>9s} "
          f"{'replay/plain':>12s}   {'cpu lse/plain':>13s} {'cpu replay/plain':>16s}  "
          f"{'max |lse-replay|':>16s} route"
          + (f"   {'rev/plain':>9s} {'cpu rev/plain':>13s}" if rev else ""))
    for family in args.families.split(","):
        pipe = _pipeline(family)
        pipe = (_widen(family, pipe) if args.wide else pipe).to(args.device)
        plan = _plan(family, pipe, args.steps, args.size, 1)
        _plain(plan)
        _, fast = _captured(plan, 1, route="auto")                 # warm-up, and the maps of both routes
        _, slow = _captured(plan, 1, route="replay")
        diff = _map_difference(fast["result"], slow["result"])
        if rev:
            _captured(plan, 1, classes=rev)
        variants = [("lse", lambda p=plan: _captured(p, 1, route="auto")[0]),
                    ("replay", lambda p=plan: _captured(p, 1, route="replay")[0])]
        if rev:
            variants.append(("rev", lambda p=plan: _captured(p, 1, classes=rev)[0]))
        ratios, walls, plains = aba_ratios(plan, variants, args.repeats)
        pw = statistics.median(x[0] for x in plains)
        best = min(x[0] for x in plains)
        med = {name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
               for name, v in ratios.items()}
        (cw, cc), (rw, rc) = med["lse"], med["replay"]
        ow, oc = med.get("rev", (0.0, 0.0))
        mins = "  best-of: " + " ".join(f"{name} {min(v) / best:.3f}x" for name, v in walls.items())
        print(f"{family:8s} {args.steps:5d} {pw:8.4f} {cw * pw:8.4f} {rw * pw:8.4f} {cw:8.3f}x {rw:11.3f}x   "
              f"{cc:12.3f}x {rc:15.3f}x  {diff:16.2e} {','.join(fast['routes'])}"
              + (f"   {ow:8.3f}x {oc:12.3f}x" if rev else "") + mins, flush=True)

    s1, s2 = (int(x) for x in args.memory_steps.split(","))
    print("\nmemory held by the capture (bytes; stored = accumulators + per-step maps, exact)")
    print(f"{'family':8s} {'stride':>6s} {'steps':>5s} {'stored':>10s} {'transient':>10s} {'tokens':>6s} "
          f"{'cuda extra':>10s}")
    for family in args.families.split(","):
        pipe = _pipeline(family)
        pipe = (_widen(family, pipe) if args.wide else pipe).to(args.device)
        for stride_name in ("steps", "1"):
            for steps in (s1, s2):
                stride = steps if stride_name == "steps" else 1
                plan = _plan(family, pipe, steps, args.size, stride)
                _, mem = _captured(plan, stride)
                base = _cuda_peak(lambda plan=plan: _plain(plan))
                peak = _cuda_peak(lambda plan=plan, stride=stride: _captured(plan, stride))
                extra = f"{peak - base:10d}" if base is not None and peak is not None else f"{'n/a':>10s}"
                print(f"{family:8s} {stride:6d} {mem['steps']:5d} {mem['stored']:10d} {mem['transient']:10d} "
                      f"{mem['tokens']:6d} {extra}")


if __name__ == "__main__":
    main()
