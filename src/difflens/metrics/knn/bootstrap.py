"""Bootstrap of the fake set for the k-NN metrics: the metrics of B resamples from the single pass.

Each resample's values equal ``prdc(real, fake[idx_b])`` exactly. A resample with replacement holds
duplicates, at distance 0 from each other, so a point drawn more than k times has k-NN radius 0; that is
a property of resampling, accepted as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.knn import backend, radii
from difflens.metrics.knn.compute import ALL_METRICS, Request, radii_of
from difflens.metrics.knn.cross import cross
from difflens.metrics.knn.exact import FeatureSet, error_bound, exact_d2, prepare_pair

BOOT_DEPTH = 24  # neighbours kept per fake point beyond k, to find its radius in any resample

Lists = tuple[np.ndarray, np.ndarray, np.ndarray]


def exact_lists(ops: backend.Ops, fs: FeatureSet, kk: int, block: int, counts: np.ndarray, k: int) -> Lists:
    """Each row's nearest points (self included) as far as the resamples ``counts`` need them: exact
    squared distances sorted ascending (ties by index; ``inf`` past the computed prefix), their indices,
    and the certified depth (the first ``depth`` entries are the true nearest points, in order)."""
    n = fs.n
    kk = min(kk, n)
    tol = error_bound(fs, fs)
    top = radii.approx_self_lists(ops, fs, kk, block)
    v, idx = top.v, top.i
    rows = np.arange(n)
    self_mask = idx == rows[:, None]
    # how deep each row's list is needed: the position where any resample's count reaches k (in the
    # approximate order), then past every entry tied with it within 2 tol
    need = np.full(n, min(k + 1, kk))
    for c in counts:
        reach = np.cumsum(c[idx] - self_mask, axis=1) >= k
        pos = np.where(reach.any(axis=1), reach.argmax(axis=1), kk - 1)
        np.maximum(need, pos + 1, out=need)
    for c in range(1, kk):
        grow = (need == c) & (v[:, c] <= v[:, c - 1] + 2 * tol)
        need[grow] = c + 1
    r_pairs = np.repeat(rows, need)
    c_pos = np.arange(len(r_pairs)) - np.repeat(np.cumsum(need) - need, need)
    e = np.full((n, kk), np.inf)
    e[r_pairs, c_pos] = exact_d2(fs.src, r_pairs, fs.src, idx[r_pairs, c_pos])
    o = np.argsort(idx, axis=1, kind="stable")             # ties in distance: by index
    e, idx = np.take_along_axis(e, o, axis=1), np.take_along_axis(idx, o, axis=1)
    o = np.argsort(e, axis=1, kind="stable")
    e, idx = np.take_along_axis(e, o, axis=1), np.take_along_axis(idx, o, axis=1)
    if kk == n:
        bound = np.where(need < kk, v[rows, np.minimum(need, kk - 1)] - tol, np.inf)
    else:  # everything not computed has a float32 value >= this, so an exact value >= it - tol
        bound = v[rows, np.minimum(need, kk - 1)] - tol
    depth = (e < bound[:, None]).sum(axis=1)
    return e, idx, depth


def resample_sq_radii(fs: FeatureSet, lists: Lists, counts: np.ndarray, k: int) -> np.ndarray:
    """Squared k-NN radius of every fake point in every resample (multiplicities ``counts``, (B, M)):
    the k-th smallest distance to the other positions of the resample, copies of itself counting 0.
    NaN where the point is absent from the resample."""
    e, idx, depth = lists
    m, kk = e.shape
    rows = np.arange(m)
    self_mask = idx == rows[:, None]
    in_prefix = np.arange(kk)[None, :] < depth[:, None]
    has_self = (self_mask & in_prefix).any(axis=1)
    out = np.full(counts.shape, np.nan)
    todo: dict[int, list[int]] = {}
    for b in range(counts.shape[0]):
        c = counts[b]
        cum = np.cumsum(c[idx] - self_mask, axis=1)
        reach = (cum >= k) & in_prefix
        pos = reach.argmax(axis=1)
        ok = reach[rows, pos] & has_self
        present = c > 0
        good = present & ok
        out[b, good] = e[good, pos[good]]
        for j in np.nonzero(present & ~ok)[0].tolist():
            todo.setdefault(j, []).append(b)
    for j, bs in todo.items():   # rare: the list is too short for this resample; use the whole row
        ej = exact_d2(fs.src, np.full(m, j), fs.src, rows)
        o = np.lexsort((rows, ej))
        for b in bs:
            cum = np.cumsum(counts[b][o] - (o == j))
            out[b, j] = ej[o][int(np.argmax(cum >= k))]
    return out


def prdc_bootstrap(real: np.ndarray, fake: np.ndarray, counts: np.ndarray, k_pr: int = 3, k_dc: int = 5,
                   block_size: int = 1024, device: str = "cpu", metrics: Sequence[str] = ALL_METRICS,
                   real_radii: dict[int, np.ndarray] | None = None
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The k-NN metrics of ``fake`` and of every resample of it, from one pass.

    ``counts`` (B, M) holds the multiplicity of each fake point in each resample (rows of
    :func:`difflens.metrics.bootstrap.bootstrap_counts`). Returns ``(point values, {metric: (B,)})``; each
    resample's values equal ``prdc(real, fake[idx_b])`` exactly. How: precision and density are sums of
    per-fake-point quantities weighted by the multiplicities; coverage needs only the (sparse) pairs inside
    the real balls; recall needs each fake point's radius within the resample, read off its sorted exact
    neighbour list (copies of a point sit at distance 0), and the pairs within the largest such radius.
    Cost: one prdc pass plus O(B (M k + pairs)).
    """
    req = Request.check(metrics, k_pr, k_dc, block_size)
    ops = backend.ops_for(device)
    real_fs, fake_fs = prepare_pair(real, fake)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != fake_fs.n or np.any(counts.sum(axis=1) != fake_fs.n):
        raise DifflensError(f"Bootstrap counts must be (B, {fake_fs.n}) multiplicities summing to "
                            f"{fake_fs.n} per row, got shape {counts.shape}.", None)
    real_r = req.given_radii(real_radii, real_fs.n)
    req.check_sizes(real_fs.n, fake_fs.n)
    k_pr, k_dc, block = req.k_pr, req.k_dc, req.block
    nb = counts.shape[0]
    rec_max = rec_min = rf = rb = None
    with backend.strict_matmul(ops):
        missing = [k for k in req.need_real if k not in real_r]
        if missing:
            real_r.update(radii_of(ops, real_fs, missing, block))
        if req.want_r:
            lists = exact_lists(ops, fake_fs, k_pr + 1 + BOOT_DEPTH + radii.SLACK, block, counts, k_pr)
            rf = np.sqrt(resample_sq_radii(fake_fs, lists, np.ones((1, fake_fs.n), np.int64), k_pr)[0])
            rb = np.sqrt(resample_sq_radii(fake_fs, lists, counts, k_pr))
            rec_max = np.fmax(rf, np.nanmax(rb, axis=0, initial=0.0))
            rec_min = np.fmin(rf, np.nanmin(np.where(np.isnan(rb), np.inf, rb), axis=0))
        res = cross(ops, real_fs, fake_fs, real_r.get(k_pr) if req.want_p else None, None,
                    real_r.get(k_dc) if req.want_dc else None, block,
                    rec_max=rec_max, keep_pairs=req.want_dc)
    n, m = real_fs.n, fake_fs.n
    point: dict[str, float] = {}
    boot: dict[str, np.ndarray] = {}
    present = counts > 0
    w = counts.astype(np.float64)
    if res.precise is not None:
        point["precision"] = float(np.count_nonzero(res.precise)) / m
        boot["precision"] = (w @ res.precise.astype(np.float64)) / m
    if res.dens_count is not None and res.covered is not None and res.cov_pairs is not None:
        point["density"] = (1.0 / float(k_dc)) * (float(res.dens_count.sum()) / m)
        boot["density"] = (1.0 / float(k_dc)) * ((w @ res.dens_count.astype(np.float64)) / m)
        point["coverage"] = float(np.count_nonzero(res.covered)) / n
        pi, pj = res.cov_pairs
        cov = np.empty(nb)
        for b in range(nb):
            hit = np.zeros(n, dtype=bool)
            hit[pi[present[b, pj]]] = True
            cov[b] = float(np.count_nonzero(hit)) / n
        boot["coverage"] = cov
    if res.rec_pairs is not None and rf is not None and rb is not None and rec_min is not None:
        ri, cj, approx = res.rec_pairs
        always = approx < rec_min[cj] ** 2 - res.tol      # inside every resample's ball of j
        dist = np.full(len(ri), -np.inf)
        need = ~always
        dist[need] = np.sqrt(exact_d2(real_fs.src, ri[need], fake_fs.src, cj[need]))
        hit = np.zeros(n, dtype=bool)
        hit[ri[dist <= rf[cj]]] = True
        point["recall"] = float(np.count_nonzero(hit)) / n
        rec = np.empty(nb)
        for b in range(nb):
            hit = np.zeros(n, dtype=bool)
            ok = present[b, cj] & (dist <= rb[b, cj])
            hit[ri[ok]] = True
            rec[b] = float(np.count_nonzero(hit)) / n
        boot["recall"] = rec
    return {key: point[key] for key in req.metrics}, {key: boot[key] for key in req.metrics}
