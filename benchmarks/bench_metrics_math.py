"""Benchmark of the metric math (run by hand; prints tables, asserts nothing).

    .venv/bin/python benchmarks/bench_metrics_math.py            # full: 10k x 2048 (+ 50k k-NN)
    .venv/bin/python benchmarks/bench_metrics_math.py --quick    # 3k x 2048, no 50k run

1. FID from two N x D float32 feature sets: difflens (Cholesky + eigvalsh, float64) against the
   ``scipy.linalg.sqrtm`` route (pytorch-fid / TTUR formula), torch-fidelity's ``fid_statistics_to_metric``
   (``np.linalg.eigvals``) and torchmetrics' ``_compute_fid`` (``torch.linalg.eigvals``), same statistics.
2. Precision/recall/density/coverage on N x D: difflens (exact, blockwise) against torch-fidelity's
   ``prc_features_to_metric`` (precision/recall only) and prdc 0.2's ``compute_prdc``; then difflens alone
   at the large size. Every method runs in its own subprocess, which generates the features itself, so
   that its peak resident memory (``ru_maxrss``) is its own: the table shows the peak and the peak above
   the process's baseline (interpreter + imports + the two float32 feature sets).

Features: float32 Gaussian with a rank-64 structure plus isotropic noise and a common offset; the fake set
uses another seed and a 10% larger structured component, so every metric is away from its bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.abspath(__file__)


# ------------------------------------------------------------------------------------------- features

def make_features(n: int, d: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Low-rank Gaussian features, generated in float32 chunks (no float64 copy of the whole set)."""
    basis = np.random.default_rng(12345).standard_normal((64, d), dtype=np.float32) / 8.0
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 2048):
        c = min(2048, n - s)
        z = rng.standard_normal((c, 64), dtype=np.float32) @ basis
        z *= np.float32(scale)
        z += np.float32(0.3) * rng.standard_normal((c, d), dtype=np.float32)
        z += np.float32(0.5)
        out[s:s + c] = z
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gemm_gflops(dtype: type, size: int = 2048, reps: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((size, size)).astype(dtype)
    b = np.random.default_rng(1).standard_normal((size, size)).astype(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


# ---------------------------------------------------------------------------------------------- child

def child(args: argparse.Namespace) -> None:
    method = args.child
    res: dict = {"method": method}
    if method == "gemm":
        res.update(sgemm=gemm_gflops(np.float32), dgemm=gemm_gflops(np.float64))
        print("RESULT " + json.dumps(res), flush=True)
        return
    if method == "fid":
        child_fid(args, res)
        print("RESULT " + json.dumps(res), flush=True)
        return
    if method == "torch-fidelity-prc":
        import torch
        from torch_fidelity.metric_prc import prc_features_to_metric
        res["torch_threads"] = torch.get_num_threads()
    elif method == "prdc":
        import prdc as prdc_lib
    else:
        from difflens.metrics import knn
        from difflens.metrics.bootstrap import prdc_with_bootstrap
    real = make_features(args.n, args.dim, seed=1)
    fake = make_features(args.n, args.dim, seed=2, scale=1.1)
    base = rss_mb()
    t0 = time.perf_counter()
    if method == "torch-fidelity-prc":
        out = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                     prc_batch_size=10000, save_cpu_ram=False, verbose=False)
        vals = {"precision": out["precision"], "recall": out["recall"]}
    elif method == "prdc":
        out = prdc_lib.compute_prdc(real, fake, nearest_k=5)
        vals = {key: float(v) for key, v in out.items()}
    elif method == "difflens-bootstrap":
        _, boot = prdc_with_bootstrap(real, fake, args.bootstrap, seed=0, block_size=args.block)
        vals = {f"{k}_ci95_width": float(np.percentile(v, 97.5) - np.percentile(v, 2.5))
                for k, v in boot.items()}
    else:
        vals = knn.prdc(real, fake, block_size=args.block)
    res.update(seconds=time.perf_counter() - t0, base_mb=base, peak_mb=rss_mb(), values=vals)
    print("RESULT " + json.dumps(res), flush=True)


def child_fid(args: argparse.Namespace, res: dict) -> None:
    import scipy.linalg

    from difflens.metrics.fid import fid_from_stats
    from difflens.metrics.stats import GaussianStats

    real = make_features(args.n, args.dim, seed=1)
    fake = make_features(args.n, args.dim, seed=2, scale=1.1)
    t0 = time.perf_counter()
    sr = GaussianStats.from_features(real)
    sf = GaussianStats.from_features(fake)
    res["stats_seconds"] = (time.perf_counter() - t0) / 2
    mu1, s1, mu2, s2 = sr.mean, sr.covariance(), sf.mean, sf.covariance()
    timings: dict[str, tuple[float, float]] = {}

    def run(name: str, fn) -> None:
        t0 = time.perf_counter()
        val = float(fn())
        timings[name] = (time.perf_counter() - t0, val)

    run("difflens", lambda: fid_from_stats(sr, sf))

    def sqrtm_route() -> float:
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        diff = mu1 - mu2
        return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)

    run("scipy.linalg.sqrtm", sqrtm_route)
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    run("torch-fidelity (eigvals)", lambda: fid_statistics_to_metric(
        {"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)["frechet_inception_distance"])
    import torch
    from torchmetrics.image.fid import _compute_fid
    t = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    run("torchmetrics (torch eigvals)", lambda: _compute_fid(*t).item())
    res["timings"] = timings


def run_child(args: argparse.Namespace, method: str, **extra: object) -> dict:
    cmd = [sys.executable, HERE, "--child", method, "--n", str(extra.get("n", args.n)),
           "--dim", str(args.dim), "--block", str(extra.get("block", args.block)),
           "--bootstrap", str(args.bootstrap)]
    env = dict(os.environ)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{method} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# ------------------------------------------------------------------------------------------ flop counts

def knn_flops_difflens(n: int, m: int, d: int, block: int) -> float:
    """Upper triangle of each set in strips of block/2 rows (diagonal squares in full) plus real x fake."""
    def tri(count: int) -> float:
        half = max(1, block // 2)
        return sum(min(half, count - s) * (count - s) for s in range(0, count, half))
    return 2.0 * (d + 2) * (tri(n) + tri(m) + n * m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3k x 2048 and no large run")
    ap.add_argument("--n", type=int, default=None, help="set size for FID and the k-NN comparison")
    ap.add_argument("--n-large", type=int, default=50000, help="set size for the large difflens k-NN run")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension")
    ap.add_argument("--block", type=int, default=1024, help="difflens k-NN block size")
    ap.add_argument("--blocks", type=str, default=None, help="comma list of block sizes to compare")
    ap.add_argument("--threads", type=int, default=0, help="BLAS/OpenMP threads in children (0: default)")
    ap.add_argument("--skip-fid", action="store_true", help="skip the FID section")
    ap.add_argument("--skip-refs", action="store_true", help="skip torch-fidelity and prdc k-NN runs")
    ap.add_argument("--bootstrap", type=int, default=100,
                    help="resamples for the one-pass k-NN bootstrap timing (0: skip)")
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n is None:
        args.n = 3000 if args.quick else 10000
    if args.child:
        child(args)
        return

    n, d = args.n, args.dim
    print(f"# difflens metric-math benchmark: N={n}, D={d}, cpus={os.cpu_count()}, "
          f"threads={args.threads or 'default'}", flush=True)
    g = run_child(args, "gemm")
    print(f"machine: sgemm {g['sgemm']:.0f} GFLOP/s, dgemm {g['dgemm']:.0f} GFLOP/s (2048^3, best of 3)\n",
          flush=True)

    if not args.skip_fid:
        f = run_child(args, "fid")
        tm = f["timings"]
        ref_t, ref_v = tm["scipy.linalg.sqrtm"]
        print(f"## FID from two {n} x {d} feature sets (statistics: {f['stats_seconds']:.2f} s per set)")
        print(f"{'method':32s} {'seconds':>9s} {'speed-up':>9s} {'FID':>18s} {'rel. diff vs sqrtm':>19s}")
        for name, (sec, val) in tm.items():
            rel = abs(val - ref_v) / abs(ref_v)
            print(f"{name:32s} {sec:9.3f} {ref_t / sec:8.1f}x {val:18.10f} {rel:19.2e}")
        dflops = 2 * d ** 3 / 3 * 2 + 4 * d ** 3 + 4 * d ** 3 / 3   # 2 Cholesky, L^T S L, tridiagonalization
        sec = tm["difflens"][0]
        print(f"difflens FID: ~{dflops / 1e9:.0f} GFLOP -> {dflops / sec / 1e9:.0f} GFLOP/s "
              f"({dflops / (g['dgemm'] * 1e9) / sec:.2f} of the dgemm-rate floor)\n", flush=True)

    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else [args.block]
    print(f"## precision/recall/density/coverage, {n} x {d} (real) vs {n} x {d} (fake), k=3 / k=5")
    head = (f"{'method':34s} {'seconds':>8s} {'peak MB':>8s} {'above base':>10s} {'GFLOP':>7s} "
            f"{'GFLOP/s':>8s}  values")
    print(head, flush=True)
    rows = []
    for b in blocks:
        rows.append((f"difflens (block {b})", run_child(args, "difflens", block=b),
                     knn_flops_difflens(n, n, d, b)))
        _print_row(*rows[-1])
    if not args.skip_refs:
        rows.append(("torch-fidelity prc (P/R only)", run_child(args, "torch-fidelity-prc"),
                     2.0 * (d + 2) * 3 * n * n))
        _print_row(*rows[-1])
        rows.append(("prdc 0.2 compute_prdc", run_child(args, "prdc"), 2.0 * d * 3 * n * n))
        _print_row(*rows[-1])
        best = min((r for r in rows if r[0].startswith("difflens")), key=lambda r: r[1]["seconds"])
        tf = next(r for r in rows if r[0].startswith("torch-fidelity"))[1]
        pr = next(r for r in rows if r[0].startswith("prdc"))[1]
        v = best[1]["values"]
        same_pr = all(round(v[k] * n) == round(tf["values"][k] * n) for k in ("precision", "recall"))
        same_dc = all(v[k] == pr["values"][k] for k in ("density", "coverage"))
        print(f"speed-up of {best[0]}: {tf['seconds'] / best[1]['seconds']:.2f}x vs torch-fidelity prc "
              f"(which computes P/R only), {pr['seconds'] / best[1]['seconds']:.2f}x vs prdc; "
              f"P/R equal torch-fidelity: {same_pr}; D/C equal prdc: {same_dc}")
    if args.bootstrap:
        name = f"difflens + {args.bootstrap} bootstrap resamples"
        rows.append((name, run_child(args, "difflens-bootstrap", block=blocks[0]), knn_flops_difflens(
            n, n, d, blocks[0])))
        _print_row(*rows[-1])
        single = next(r for r in rows if r[0] == f"difflens (block {blocks[0]})")[1]["seconds"]
        ratio = rows[-1][1]["seconds"] / single
        print(f"point values + {args.bootstrap} resamples in one pass: {ratio:.2f}x the time of one "
              f"evaluation (a loop of prdc calls: {args.bootstrap + 1}x)")
    for name, r, flops in rows:
        if name.startswith("difflens ("):
            floor = flops / (g["sgemm"] * 1e9)
            print(f"{name}: {flops / 1e12:.3f} TFLOP, floor at the sgemm rate {floor:.2f} s, "
                  f"time / floor = {r['seconds'] / floor:.2f}")
    print(flush=True)

    if not args.quick and args.n_large:
        nl = args.n_large
        print(f"## difflens at {nl} x {d} (real) vs {nl} x {d} (fake)")
        print(head, flush=True)
        r = run_child(args, "difflens", n=nl, block=blocks[0])
        flops = knn_flops_difflens(nl, nl, d, blocks[0])
        _print_row(f"difflens (block {blocks[0]})", r, flops)
        floor = flops / (g["sgemm"] * 1e9)
        print(f"{flops / 1e12:.2f} TFLOP, floor at the sgemm rate {floor:.1f} s, "
              f"time / floor = {r['seconds'] / floor:.2f}")


def _print_row(name: str, r: dict, flops: float) -> None:
    short = {k: k.split("_")[0][:4] + ("(ci width)" if "_" in k else "") for k in r["values"]}
    vals = ", ".join(f"{short[k]}={v:.4f}" for k, v in r["values"].items())
    print(f"{name:34s} {r['seconds']:8.2f} {r['peak_mb']:8.0f} {r['peak_mb'] - r['base_mb']:10.0f} "
          f"{flops / 1e9:7.0f} {flops / r['seconds'] / 1e9:8.0f}  {vals}", flush=True)


if __name__ == "__main__":
    main()
