"""Exact k-th nearest-neighbour distances within one set, for a block of rows.

A row's list of its ``k + 1 + SLACK`` smallest float32 tile values (self included) comes either from the
upper triangle of tiles of the whole set (:func:`approx_self_lists`: half the flops, every row) or from
the strip of the block's rows against every column (:func:`approx_row_lists`: one shard of rows). Either
list is then certified the same way (:func:`certify`), so a row's radius is the exact float64 value,
whichever rows were computed together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.knn.backend import Ops, for_each
from difflens.metrics.knn.exact import U32, FeatureSet, blocks, error_bound, exact_d2

SLACK = 8   # extra neighbours kept per row beyond k+1, for the certification gap test


class TopList:
    """Per row, the ``kk`` smallest (approximate value, index) pairs seen so far, sorted ascending."""

    def __init__(self, n: int, kk: int) -> None:
        self.kk = kk
        self.v = np.full((n, kk), np.inf)
        self.i = np.full((n, kk), -1, dtype=np.int64)

    def merge(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Insert candidates (row, global column, value); each pair must be new to its row."""
        if len(rows) == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows, cols, vals = rows[order], cols[order], vals[order]
        urows, starts, counts = np.unique(rows, return_index=True, return_counts=True)
        kk = self.kk
        width = kk + int(counts.max())
        dv = np.full((len(urows), width), np.inf)
        di = np.full((len(urows), width), -1, dtype=np.int64)
        dv[:, :kk] = self.v[urows]
        di[:, :kk] = self.i[urows]
        ur = np.repeat(np.arange(len(urows)), counts)
        pos = kk + np.arange(len(rows)) - np.repeat(starts, counts)
        dv[ur, pos] = vals
        di[ur, pos] = cols
        o = np.argsort(dv, axis=1, kind="stable")[:, :kk]
        self.v[urows] = np.take_along_axis(dv, o, axis=1)
        self.i[urows] = np.take_along_axis(di, o, axis=1)


def approx_self_lists(ops: Ops, fs: FeatureSet, kk: int, block: int) -> TopList:
    """Approximate (float32 tile values) ``kk`` smallest squared distances of every row, self included.

    Row strips of ``block // 2`` rows: the diagonal squares first (they fill every row's list), then the
    part of each strip right of its square in tiles of ``block // 2 x 2 block`` (the same memory as a
    ``block x block`` tile); the wasted lower half of the diagonal squares is ``N block / 4`` entries.
    """
    n = fs.n
    top = TopList(n, kk)
    strips = blocks(n, max(1, block // 2))
    right = ops.put(fs.right())
    lock = threading.Lock()

    def diagonal(b: tuple[int, int]) -> None:
        i0, i1 = b
        t = ops.tile(ops.empty((i1 - i0) ** 2), ops.put(fs.left(slice(i0, i1))), right[i0:i1])
        v, c = ops.topk_rows(t, kk)
        r = np.repeat(np.arange(i0, i1), v.shape[1])
        with lock:
            top.merge(r, c.ravel() + i0, v.ravel())

    def strip(b: tuple[int, int]) -> None:
        i0, i1 = b
        left = ops.put(fs.left(slice(i0, i1)))
        width = max(1, (block * block) // max(1, i1 - i0))
        buf = ops.empty((i1 - i0) * width)
        for j0 in range(i1, n, width):
            j1 = min(j0 + width, n)
            t = ops.tile(buf, left, right[j0:j1])
            # rows i0:i1 take the entries below their current list maximum, and columns j0:j1 (rows of
            # the transposed tile) likewise: one sparse selection, then split. A threshold read while
            # another worker lowers it is still an upper bound: the selection is a superset, no loss.
            th_r, th_c = top.v[i0:i1, -1].copy(), top.v[j0:j1, -1].copy()
            r, c, v = ops.nonzero_lt_rows_or_cols(t, th_r, th_c)
            sel_r = v < th_r[r]
            sel_c = v < th_c[c]
            with lock:
                top.merge(r[sel_r] + i0, c[sel_r] + j0, v[sel_r])
                top.merge(c[sel_c] + j0, r[sel_c] + i0, v[sel_c])

    for_each(ops, strips, diagonal)
    for_each(ops, strips[:-1], strip)
    return top


def approx_row_lists(ops: Ops, fs: FeatureSet, rows: range, kk: int, block: int) -> TopList:
    """Like :func:`approx_self_lists` for the rows ``rows`` only (list row ``r`` is set row
    ``rows.start + r``): strips of ``block // 2`` rows against every column, ``block^2``-entry tiles."""
    n = fs.n
    top = TopList(len(rows), kk)
    right = ops.put(fs.right())
    lock = threading.Lock()

    def strip(b: tuple[int, int]) -> None:
        i0, i1 = b
        local = np.arange(i0, i1) - rows.start
        left = ops.put(fs.left(slice(i0, i1)))
        width = max(kk, (block * block) // max(1, i1 - i0))
        buf = ops.empty((i1 - i0) * width)
        for j0 in range(0, n, width):
            t = ops.tile(buf, left, right[j0:min(j0 + width, n)])
            if j0 == 0:   # the first tile fills every list (width >= kk)
                v, c = ops.topk_rows(t, kk)
                r = np.repeat(local, v.shape[1])
                c, v = c.ravel(), v.ravel()
            else:         # then only entries below the row's current list maximum
                r, c, v = ops.nonzero_lt_rows(t, top.v[local, -1].copy())
                r = local[r]
            with lock:
                top.merge(r, c + j0, v)

    for_each(ops, blocks(n, max(1, block // 2), rows), strip)
    return top


def exact_rows_smallest(ops: Ops, fs: FeatureSet, rows: np.ndarray, q: int, tol: float, block: int
                        ) -> np.ndarray:
    """Exact q smallest squared distances of ``rows`` against the whole set (fallback path), (len, q)."""
    out = np.empty((len(rows), q), dtype=np.float64)
    chunk = max(1, min(block, (1 << 22) // max(fs.n, 1)))
    right = ops.put(fs.right())
    buf = ops.empty(chunk * fs.n)
    for s in range(0, len(rows), chunk):
        rr = rows[s:s + chunk]
        t = ops.tile(buf, ops.put(fs.left(rr)), right)
        v, _ = ops.topk_rows(t, q)
        vq = np.sort(v, axis=1)[:, q - 1]
        ri, cj, _ = ops.nonzero_lt_rows(t, vq + 2 * tol + 2 * U32 * np.abs(vq))
        e = exact_d2(fs.src, rr[ri], fs.src, cj)
        for local in range(len(rr)):
            ev = np.sort(e[ri == local])
            out[s + local] = ev[:q]
    return out


def certify(ops: Ops, fs: FeatureSet, top: TopList, row_ids: np.ndarray, ks: Sequence[int], tol: float,
            block: int) -> dict[int, np.ndarray]:
    """Exact squared (k+1)-th smallest distances of the list rows (set rows ``row_ids``) for every k.

    Gap test: around position k+1 of a row's sorted list, the window of entries chained by gaps
    ``<= 2 tol`` holds every point whose exact value can be the (k+1)-th; they are recomputed exactly
    and sorted. A window reaching the end of the list (unless the list is the whole set) falls back to
    an exact scan of the row (:func:`exact_rows_smallest`)."""
    vals, idx = top.v, top.i
    nr, kk = vals.shape
    linked = np.diff(vals, axis=1) <= 2 * tol          # (nr, kk-1): entries c and c+1 not separated
    out: dict[int, np.ndarray] = {}
    fallback: set[int] = set()
    rows = np.arange(nr)
    for k in ks:
        p = k  # 0-based position of the (k+1)-th smallest
        lo = np.full(nr, p)
        for c in range(p, 0, -1):
            step = (lo == c) & linked[:, c - 1]
            lo[step] = c - 1
        hi = np.full(nr, p)
        for c in range(p, kk - 1):
            step = (hi == c) & linked[:, c]
            hi[step] = c + 1
        # certified when the window ends before the list does (or the list holds the whole set)
        ok = np.full(nr, True) if kk == fs.n else hi < kk - 1
        fallback.update(np.nonzero(~ok)[0].tolist())
        width = hi - lo + 1
        sel = rows[ok]
        wsel = width[ok]
        r_pairs = np.repeat(sel, wsel)
        offs = np.arange(len(r_pairs)) - np.repeat(np.cumsum(wsel) - wsel, wsel)
        c_pos = lo[r_pairs] + offs
        e = exact_d2(fs.src, row_ids[r_pairs], fs.src, idx[r_pairs, c_pos])
        order = np.lexsort((e, r_pairs))
        starts = np.cumsum(wsel) - wsel
        radius = np.empty(nr)
        radius[sel] = e[order][starts + (p - lo[sel])]
        out[k] = radius
    if fallback:
        bad = np.array(sorted(fallback), dtype=np.int64)
        exact = exact_rows_smallest(ops, fs, row_ids[bad], max(ks) + 1, tol, block)
        for k in ks:
            out[k][bad] = exact[:, k]
    return out


def sq_radii(ops: Ops, fs: FeatureSet, ks: Sequence[int], block: int, rows: range | None = None
             ) -> dict[int, np.ndarray]:
    """Exact squared k-th neighbour distances (float64, self excluded) of ``rows`` (default: every row,
    by the triangle of tiles) for every k in ``ks``, from one pass: ``{k: (len(rows),)}``."""
    ks = sorted({int(k) for k in ks})
    q_max = ks[-1] + 1
    n = fs.n
    if n < q_max:
        raise DifflensError(
            f"k-NN with k={ks[-1]} needs at least {q_max} samples in a set, got {n}.",
            "Add images or lower k.")
    rows = range(n) if rows is None else rows
    if len(rows) == 0:
        return {k: np.zeros(0) for k in ks}
    kk = min(n, q_max + SLACK)
    tol = error_bound(fs, fs)
    whole = rows == range(n)
    top = approx_self_lists(ops, fs, kk, block) if whole else approx_row_lists(ops, fs, rows, kk, block)
    return certify(ops, fs, top, np.arange(rows.start, rows.stop), ks, tol, block)
