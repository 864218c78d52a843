"""Exact k-NN manifold metrics: precision/recall (Kynkaanniemi et al. 2019) and density/coverage
(Naeem et al. 2020), blockwise, memory O(block^2) per tile, never N x N.

Definitions (radius r_k(x) = distance from x to its k-th nearest neighbour in its own set, self excluded;
computed as the (k+1)-th smallest distance including the self-distance 0, as torch-fidelity's
``kthvalue(k + 1)`` and prdc's ``get_kth_value(k + 1)`` do, so duplicates count as neighbours at 0):

- precision (k=3) = (1/M) sum_j 1[ exists i: d(f_j, r_i) <= r_3(r_i) ]
- recall    (k=3) = (1/N) sum_i 1[ exists j: d(r_i, f_j) <= r_3(f_j) ]
- density   (k=5) = 1/(k M) sum_j sum_i 1[ d(f_j, r_i) < r_5(r_i) ]
- coverage  (k=5) = (1/N) sum_i 1[ min_j d(r_i, f_j) < r_5(r_i) ]

Exactness. Every comparison is decided on the exact distance ``sqrt(sum((a - b)^2))`` evaluated in float64
from the input values (exactly 0 for duplicates). The speed comes from float32 matrix products: a tile of
squared distances ``||a||^2 + ||b||^2 - 2 a.b`` (float32 GEMM) carries a rigorous error bound
``tol = 1.25 (gamma_{D+1} + 8u) (2 max|a| max|b| + max||a||^2 + max||b||^2 + max offset)``
(``u = 2^-24``, ``gamma_n = n u / (1 - n u)``: the worst-case bound of any summation order, so it holds
for every BLAS and for cuBLAS with TF32 off). Only comparisons that fall within ``tol`` of their threshold
(typically a handful per thousand rows) are recomputed in float64 -- so the results are those of exact
arithmetic, do not depend on block size, device or BLAS, and equal torch-fidelity's ``prc`` and prdc's
``compute_prdc`` whenever their own float32 rounding does not flip a near-tie (they disagree with each
other there: torch-fidelity compares float32 ``cdist`` values, prdc float64 distances rounded to float32).

Cost. Radii: one pass over the upper triangle of tiles of each set (half the flops of a full N x N
product), keeping the running k+1+slack smallest values per row with ``topk`` in both directions of a
tile. Cross pass: one real x fake product; all four metrics are reductions of the same tile. Total
``2 D (N^2/2 + M^2/2 + N M)`` flops plus O(tile) elementwise passes.

Bootstrap note: a resample with replacement holds duplicates, whose distance 0 can make a k-NN radius 0;
that is a property of resampling, accepted and documented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from difflens.errors import DifflensError

_U32 = 2.0 ** -24
_SLACK = 8  # extra neighbours kept per row beyond k+1, so that the exact top-(k+1) is certified
_EXACT_CHUNK = 2048  # pairs per float64 chunk in exact recomputation
ALL_METRICS = ("precision", "recall", "density", "coverage")


def _gamma(n: int) -> float:
    return n * _U32 / (1.0 - n * _U32)


@contextlib.contextmanager
def _fp32_exact_matmul() -> Iterator[None]:
    """Full-precision fp32 matmul (no TF32 / bf16 shortcuts) inside the block, restored after."""
    import torch

    old = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_float32_matmul_precision(old)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


@dataclass
class _FeatureSet:
    """Features as given (``src``, for exact float64 recomputation) and float32 on the device."""

    src: np.ndarray          # float32 or float64 (N, D), the values distances are exact for
    x: Any                   # torch float32 (N, D) on device
    sq: Any                  # torch float32 (N,): squared norms of ``x`` (computed in float64, rounded)
    norm_max: float          # max ||x_i|| (float64, with a little headroom)
    rounded: bool            # True when ``x`` is a float32 rounding of float64 input

    @property
    def n(self) -> int:
        return int(self.src.shape[0])


def _prepare(feats: Any, name: str, device: str) -> _FeatureSet:
    import torch

    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise DifflensError(f"{name} features must be a 2-D (N, D) array, got shape {arr.shape}.", None)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DifflensError(f"{name} features must be real numbers, got dtype {arr.dtype}.", None)
    if arr.dtype != np.float32:
        arr = np.ascontiguousarray(arr, dtype=np.float64)
        x32 = arr.astype(np.float32)
        rounded = True
    else:
        arr = np.ascontiguousarray(arr)
        x32 = arr
        rounded = False
    sq64 = np.empty(arr.shape[0], dtype=np.float64)
    for s in range(0, arr.shape[0], 8192):
        blk = x32[s:s + 8192].astype(np.float64)
        sq64[s:s + 8192] = np.einsum("ij,ij->i", blk, blk)
    if not np.all(np.isfinite(sq64)):
        raise DifflensError(f"{name} features contain NaN or infinite values.", "Check the extractor input.")
    x = torch.from_numpy(x32).to(device)
    sq = torch.from_numpy(sq64.astype(np.float32)).to(device)
    norm_max = float(np.sqrt(sq64.max())) * (1 + 1e-6) if arr.shape[0] else 0.0
    return _FeatureSet(arr, x, sq, norm_max, rounded)


def _exact_d2(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Exact squared distances ``sum((a[ia] - b[ib])^2)`` in float64, in chunks of pairs."""
    out = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), _EXACT_CHUNK):
        diff = a[ia[s:s + _EXACT_CHUNK]].astype(np.float64) - b[ib[s:s + _EXACT_CHUNK]]
        out[s:s + _EXACT_CHUNK] = np.einsum("ij,ij->i", diff, diff)
    return out


def _tol(a: _FeatureSet, b: _FeatureSet, offset_max: float = 0.0) -> float:
    """Rigorous bound on |float32 tile value - exact value| for tiles of a x b (see module docstring)."""
    d = a.x.shape[1]
    mag = 2 * a.norm_max * b.norm_max + a.norm_max ** 2 + b.norm_max ** 2 + 2 * abs(offset_max)
    tol = 1.25 * (_gamma(d + 1) + 8 * _U32) * mag
    if a.rounded or b.rounded:  # float32 rounding of float64 input moves squared distances by <= this
        tol += 2.5 * _U32 * (a.norm_max + b.norm_max) ** 2
    return tol + 1e-300


def _tile(buf: Any, a: _FeatureSet, i0: int, i1: int, b: _FeatureSet, j0: int, j1: int,
          row_off: Any = None) -> Any:
    """float32 tile ``||a_i||^2 - row_off_i + ||b_j||^2 - 2 a_i.b_j`` into a reusable buffer."""
    import torch

    h, w = i1 - i0, j1 - j0
    t = buf[: h * w].view(h, w)
    left = a.sq[i0:i1] if row_off is None else row_off[i0:i1]
    torch.add(left[:, None], b.sq[None, j0:j1], out=t)
    t.addmm_(a.x[i0:i1], b.x[j0:j1].T, beta=1.0, alpha=-2.0)
    return t


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# ----------------------------------------------------------------------------------------------------
# k nearest neighbours within one set
# ----------------------------------------------------------------------------------------------------

def _approx_self_topk(fs: _FeatureSet, kk: int, block: int) -> tuple[Any, Any]:
    """Approximate (float32) ``kk`` smallest squared distances per row (self included) and their indices,
    over the upper triangle of tiles; each tile feeds its rows and (off the diagonal) its columns."""
    import torch

    n = fs.n
    dev = fs.x.device
    vals = torch.full((n, kk), float("inf"), dtype=torch.float32, device=dev)
    idx = torch.zeros((n, kk), dtype=torch.int64, device=dev)
    buf = torch.empty(block * block, dtype=torch.float32, device=dev)

    def merge(r0: int, r1: int, tv: Any, ti: Any) -> None:
        cv = torch.cat([vals[r0:r1], tv], dim=1)
        ci = torch.cat([idx[r0:r1], ti], dim=1)
        v, p = torch.topk(cv, kk, dim=1, largest=False, sorted=False)
        vals[r0:r1] = v
        idx[r0:r1] = torch.gather(ci, 1, p)

    blocks = _blocks(n, block)
    for bi, (i0, i1) in enumerate(blocks):
        for j0, j1 in blocks[bi:]:
            t = _tile(buf, fs, i0, i1, fs, j0, j1)
            kr = min(kk, j1 - j0)
            v, p = torch.topk(t, kr, dim=1, largest=False, sorted=False)
            merge(i0, i1, v, p + j0)
            if j0 != i0:
                kc = min(kk, i1 - i0)
                v, p = torch.topk(t, kc, dim=0, largest=False, sorted=False)
                merge(j0, j1, v.T, p.T + i0)
    vals, order = torch.sort(vals, dim=1)
    return vals, torch.gather(idx, 1, order)


def _exact_rows_topq(fs: _FeatureSet, rows: np.ndarray, q: int, tol: float, block: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Exact q smallest squared distances (and indices) of ``rows`` against the whole set (fallback)."""
    import torch

    out_v = np.empty((len(rows), q), dtype=np.float64)
    out_i = np.empty((len(rows), q), dtype=np.int64)
    rows_t = torch.from_numpy(rows).to(fs.x.device)
    block = max(1, min(block, (1 << 24) // max(fs.n, 1)))  # at most 64 MB of float32 per chunk
    for s in range(0, len(rows), block):
        r = rows_t[s:s + block]
        t = fs.sq[r][:, None] + fs.sq[None, :]
        t.addmm_(fs.x[r], fs.x.T, beta=1.0, alpha=-2.0)
        vq = torch.topk(t, q, dim=1, largest=False).values[:, -1]
        ri, cj = torch.nonzero(t <= (vq + 2 * tol)[:, None], as_tuple=True)
        ri = ri.cpu().numpy()
        cj = cj.cpu().numpy()
        e = _exact_d2(fs.src, rows[s:s + block][ri], fs.src, cj)
        for local in range(len(r)):
            sel = ri == local
            ev, ej = e[sel], cj[sel]
            o = np.lexsort((ej, ev))[:q]
            out_v[s + local] = ev[o]
            out_i[s + local] = ej[o]
    return out_v, out_i


def knn_sq_distances(fs: _FeatureSet, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact sorted squared distances (float64) and indices of the k+1 nearest points of each row,
    self included (column 0 is the self-distance 0 unless duplicates tie with it)."""
    q = k + 1
    n = fs.n
    if n < q:
        raise DifflensError(
            f"k-NN with k={k} needs at least {q} samples in a set, got {n}.", "Add images or lower k.")
    kk = min(n, q + _SLACK)
    tol = _tol(fs, fs)
    vals_t, idx_t = _approx_self_topk(fs, kk, block)
    vals = vals_t.cpu().numpy().astype(np.float64)
    idx = idx_t.cpu().numpy()
    vq = vals[:, q - 1]
    cand = vals <= (vq + 2 * tol)[:, None]
    # Certified when the list is complete (kk == n) or its last value lies beyond the candidate bound.
    ok = np.full(n, True) if kk == n else vals[:, kk - 1] > vq + 2 * tol
    rows_ok = np.nonzero(ok)[0]
    ri, ci = np.nonzero(cand[rows_ok])
    e = _exact_d2(fs.src, rows_ok[ri], fs.src, idx[rows_ok[ri], ci])
    full = np.full((len(rows_ok), kk), np.inf)
    full[ri, ci] = e
    order = np.argsort(full, axis=1, kind="stable")[:, :q]
    out_v = np.empty((n, q), dtype=np.float64)
    out_i = np.empty((n, q), dtype=np.int64)
    out_v[rows_ok] = np.take_along_axis(full, order, axis=1)
    out_i[rows_ok] = np.take_along_axis(idx[rows_ok], order, axis=1)
    bad = np.nonzero(~ok)[0]
    if len(bad):
        out_v[bad], out_i[bad] = _exact_rows_topq(fs, bad, q, tol, block)
    return out_v, out_i


def knn_radii(feats: np.ndarray, k: int, block_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Exact distance from each row to its k-th nearest neighbour in the same set, self excluded
    (the (k+1)-th smallest distance counting the self-distance 0), float64 (N,)."""
    import torch

    k = int(k)
    if k < 1:
        raise DifflensError(f"k must be at least 1, got {k}.", None)
    block = _check_block(block_size)
    with _fp32_exact_matmul():
        fs = _prepare(feats, "Input", device)
        v, _ = knn_sq_distances(fs, k, block)
        del fs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return np.sqrt(v[:, k])


def _check_block(block_size: int) -> int:
    block = int(block_size)
    if block < 1:
        raise DifflensError(f"block_size must be positive, got {block_size}.", None)
    return block


# ----------------------------------------------------------------------------------------------------
# real x fake pass
# ----------------------------------------------------------------------------------------------------

def _candidate_pairs(a: _FeatureSet, rows: np.ndarray, b: _FeatureSet, row_thr: np.ndarray | None,
                     col_thr: np.ndarray | None, tol: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row r of ``rows``, column j of b) whose float32 squared distance is within ``tol`` above
    ``row_thr[r] + col_thr[j]``: a superset of the pairs whose exact squared distance is <= threshold."""
    import torch

    dev = a.x.device
    out_r, out_c = [], []
    col = None if col_thr is None else torch.from_numpy(col_thr).to(dev)
    for s in range(0, len(rows), block):
        r = torch.from_numpy(rows[s:s + block]).to(dev)
        for j0, j1 in _blocks(b.n, max(block, 1024)):
            t = a.sq[r][:, None] + b.sq[None, j0:j1]
            t.addmm_(a.x[r], b.x[j0:j1].T, beta=1.0, alpha=-2.0)
            lim = torch.full((len(r), 1), tol, dtype=torch.float64, device=dev)
            if row_thr is not None:
                lim = lim + torch.from_numpy(row_thr[s:s + block]).to(dev)[:, None]
            if col is not None:
                lim = lim + col[None, j0:j1]
            ri, cj = torch.nonzero(t.double() <= lim, as_tuple=True)
            out_r.append(ri.cpu().numpy() + s)
            out_c.append(cj.cpu().numpy() + j0)
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_r), np.concatenate(out_c)


def _cross(real: _FeatureSet, fake: _FeatureSet, rr_pr: np.ndarray | None, rf_pr: np.ndarray | None,
           rr_dc: np.ndarray | None, k_dc: int, block: int) -> dict[str, float]:
    """Precision/recall (radii ``rr_pr``, ``rf_pr``) and density/coverage (``rr_dc``), exactly."""
    import torch

    dev = real.x.device
    n, m = real.n, fake.n
    want_p, want_r, want_dc = rr_pr is not None, rf_pr is not None, rr_dc is not None
    # Squared thresholds for screening (float64); exact decisions compare distances with the radii.
    p2 = None if rr_pr is None else rr_pr ** 2
    r2 = None if rf_pr is None else rf_pr ** 2
    q2 = None if rr_dc is None else rr_dc ** 2
    base = q2 if want_dc else (p2 if want_p else np.zeros(n))
    thr_max = max([float(x.max()) for x in (p2, r2, q2) if x is not None] + [0.0])
    tol = _tol(real, fake, offset_max=2 * thr_max) + 1e-12 * thr_max

    def t64(x: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(dev)

    row_off = (t64(real.sq.cpu().numpy().astype(np.float64) - base)).float()
    shift_p = t64(base - p2).float() if want_p else None          # base - P_i, added per row
    base_t = t64(base).float() if want_r else None
    r2_t = t64(r2).float() if want_r else None

    inf = float("inf")
    cov_min = torch.full((n,), inf, device=dev)
    rec_min = torch.full((n,), inf, device=dev)
    prec_min = torch.full((m,), inf, device=dev)
    dens_lo = torch.zeros(m, dtype=torch.int64, device=dev)
    dens_hi = torch.zeros(m, dtype=torch.int64, device=dev)
    buf = torch.empty(block * block, dtype=torch.float32, device=dev)
    buf2 = torch.empty(block * block, dtype=torch.float32, device=dev) if (want_r and want_p) else None
    ones = torch.ones(block, dtype=torch.float32, device=dev)
    for i0, i1 in _blocks(n, block):
        for j0, j1 in _blocks(m, block):
            t = _tile(buf, real, i0, i1, fake, j0, j1, row_off=row_off)   # d2 - base_i
            if want_dc:
                torch.minimum(cov_min[i0:i1], t.amin(dim=1), out=cov_min[i0:i1])
                dens_lo[j0:j1] += (t < -tol).sum(dim=0)
                dens_hi[j0:j1] += (t <= tol).sum(dim=0)
            if want_r:
                # d2 - R_j = (d2 - base_i) + base_i - R_j, as one rank-2 update of the tile
                u = torch.stack([base_t[i0:i1], ones[: i1 - i0]], dim=1)
                w = torch.stack([ones[: j1 - j0], -r2_t[j0:j1]], dim=0)
                if buf2 is not None:
                    t2 = torch.addmm(t, u, w, out=buf2[: t.numel()].view(t.shape))
                else:
                    t2 = t.addmm_(u, w)
                torch.minimum(rec_min[i0:i1], t2.amin(dim=1), out=rec_min[i0:i1])
            if want_p:
                if want_dc:
                    t.add_(shift_p[i0:i1, None])                              # d2 - P_i
                torch.minimum(prec_min[j0:j1], t.amin(dim=0), out=prec_min[j0:j1])

    out: dict[str, float] = {}
    if want_p:
        pm = prec_min.double().cpu().numpy()
        inside = pm < -tol
        unsure = np.nonzero(np.abs(pm) <= tol)[0]
        if len(unsure):
            rj, ci = _candidate_pairs(fake, unsure, real, None, p2, tol, block)
            e = _exact_d2(fake.src, unsure[rj], real.src, ci)
            hit = np.sqrt(e) <= rr_pr[ci]
            inside[unsure[np.unique(rj[hit])]] = True
        out["precision"] = float(np.count_nonzero(inside)) / m
    if want_r:
        rm = rec_min.double().cpu().numpy()
        inside = rm < -tol
        unsure = np.nonzero(np.abs(rm) <= tol)[0]
        if len(unsure):
            ri, cj = _candidate_pairs(real, unsure, fake, None, r2, tol, block)
            e = _exact_d2(real.src, unsure[ri], fake.src, cj)
            hit = np.sqrt(e) <= rf_pr[cj]
            inside[unsure[np.unique(ri[hit])]] = True
        out["recall"] = float(np.count_nonzero(inside)) / n
    if want_dc:
        lo = dens_lo.cpu().numpy()
        hi = dens_hi.cpu().numpy()
        unsure_cols = np.nonzero(hi != lo)[0]
        # columns with a pair within tol of its threshold are recounted exactly, all their pairs
        count = int(lo.sum()) - int(lo[unsure_cols].sum())
        if len(unsure_cols):
            rj, ci = _candidate_pairs(fake, unsure_cols, real, None, q2, tol, block)
            e = _exact_d2(fake.src, unsure_cols[rj], real.src, ci)
            count += int(np.count_nonzero(np.sqrt(e) < rr_dc[ci]))
        out["density"] = (1.0 / float(k_dc)) * (float(count) / m)
        cm = cov_min.double().cpu().numpy()
        covered = cm < -tol
        unsure = np.nonzero(np.abs(cm) <= tol)[0]
        if len(unsure):
            ri, cj = _candidate_pairs(real, unsure, fake, q2[unsure], None, tol, block)
            e = _exact_d2(real.src, unsure[ri], fake.src, cj)
            hit = np.sqrt(e) < rr_dc[unsure[ri]]
            covered[unsure[np.unique(ri[hit])]] = True
        out["coverage"] = float(np.count_nonzero(covered)) / n
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5, block_size: int = 1024,
         device: str = "cpu", metrics: Sequence[str] = ALL_METRICS,
         real_radii: dict[int, np.ndarray] | None = None) -> dict[str, float]:
    """Exact precision/recall (k=``k_pr``, ``<=``) and density/coverage (k=``k_dc``, ``<``).

    ``real_radii`` maps k to precomputed real-set radii (from :func:`knn_radii`), so that bootstrap
    resamples of the fake set do not recompute them. Returns the requested metrics as floats.
    """
    import torch

    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown or not metrics:
        raise DifflensError(f"Unknown k-NN metrics: {', '.join(unknown) or '(none given)'}.",
                            f"Choose from {', '.join(ALL_METRICS)}.")
    k_pr, k_dc = int(k_pr), int(k_dc)
    if k_pr < 1 or k_dc < 1:
        raise DifflensError(f"k must be at least 1, got k_pr={k_pr}, k_dc={k_dc}.", None)
    block = _check_block(block_size)
    want_p, want_r = "precision" in metrics, "recall" in metrics
    want_dc = "density" in metrics or "coverage" in metrics
    real_a, fake_a = np.asarray(real), np.asarray(fake)
    if real_a.ndim != 2 or fake_a.ndim != 2:
        raise DifflensError(
            f"Features must be 2-D (N, D) arrays, got {real_a.shape} and {fake_a.shape}.", None)
    if real_a.shape[1] != fake_a.shape[1]:
        raise DifflensError(
            f"Feature dimension mismatch: real D={real_a.shape[1]}, fake D={fake_a.shape[1]}.",
            "Extract both sets with the same extractor and layer.")
    need_real = sorted({k for k, w in ((k_pr, want_p), (k_dc, want_dc)) if w})
    radii: dict[int, np.ndarray] = {}
    for k in need_real:
        if real_radii is not None and k in real_radii:
            r = np.asarray(real_radii[k], dtype=np.float64)
            if r.shape != (real_a.shape[0],):
                raise DifflensError(
                    f"Precomputed real radii for k={k} have shape {r.shape}, expected ({real_a.shape[0]},).",
                    "Compute them with knn_radii on the same real features.")
            radii[k] = r
    checks = (("real", real_a, max(need_real, default=0)), ("fake", fake_a, k_pr if want_r else 0))
    for label, arr, k in checks:
        if k and arr.shape[0] < k + 1:
            raise DifflensError(
                f"k-NN metrics with k={k} need at least {k + 1} {label} samples, got {arr.shape[0]}.",
                "Add images or lower k.")
    out: dict[str, float] = {}
    with _fp32_exact_matmul():
        real_fs = _prepare(real_a, "Real", device)
        fake_fs = _prepare(fake_a, "Fake", device)
        missing = [k for k in need_real if k not in radii]
        if missing:
            v, _ = knn_sq_distances(real_fs, max(missing), block)
            for k in missing:
                radii[k] = np.sqrt(v[:, k])
        rf = None
        if want_r:
            v, _ = knn_sq_distances(fake_fs, k_pr, block)
            rf = np.sqrt(v[:, k_pr])
        res = _cross(real_fs, fake_fs, radii.get(k_pr) if want_p else None, rf,
                     radii.get(k_dc) if want_dc else None, k_dc, block)
        del real_fs, fake_fs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    for key in metrics:
        out[key] = res[key]
    return out
