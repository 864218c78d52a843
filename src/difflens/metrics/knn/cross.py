"""The real x fake pass of the k-NN engine, for a block of real rows, and its mergeable counts.

:func:`cross` decides every comparison of rows ``rows`` of the real set against every fake sample
exactly; :meth:`CrossResult.counts` turns the outcome into :class:`KnnCounts`, which add up over
disjoint blocks of rows to the counts of the whole set (what the sharded run sums over ranks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from difflens.metrics.knn.backend import Ops, for_each
from difflens.metrics.knn.exact import FeatureSet, blocks, error_bound, exact_d2


@dataclass
class KnnCounts:
    """Counts of the comparisons of some real rows against every fake sample; :meth:`merge` of the counts
    of disjoint row blocks gives the counts of their union, exactly (int64 sums). None: not computed."""

    precise: np.ndarray | None = None    # (M,) int64: blocks with a real k_pr-ball holding fake j (<=)
    dens: np.ndarray | None = None       # (M,) int64: real k_dc-balls holding fake j (strict <)
    covered: int | None = None           # real rows with a fake inside their k_dc-ball (strict <)
    recalled: int | None = None          # real rows inside some fake k_pr-ball (<=)

    def merge(self, other: KnnCounts) -> KnnCounts:
        def add(a: np.ndarray | int | None, b: np.ndarray | int | None) -> np.ndarray | int | None:
            return None if a is None or b is None else a + b

        return KnnCounts(add(self.precise, other.precise), add(self.dens, other.dens),
                         add(self.covered, other.covered), add(self.recalled, other.recalled))

    def to_vector(self) -> np.ndarray:
        """The computed counts as one int64 vector (for a sum over ranks)."""
        parts = [np.asarray(x, dtype=np.int64).reshape(-1)
                 for x in (self.precise, self.dens, self.covered, self.recalled) if x is not None]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def from_vector(self, vec: np.ndarray) -> KnnCounts:
        """Counts of the same layout as ``self`` read back from :meth:`to_vector`'s form."""
        out, pos = KnnCounts(), 0
        for name in ("precise", "dens", "covered", "recalled"):
            mine = getattr(self, name)
            if mine is None:
                continue
            size = int(np.size(mine))
            val = vec[pos:pos + size]
            setattr(out, name, val.astype(np.int64) if isinstance(mine, np.ndarray) else int(val[0]))
            pos += size
        return out

    def summary(self, n: int, m: int, k_dc: int) -> dict[str, float]:
        """precision, recall, density and coverage (those computed) as exact ratios of counts."""
        out: dict[str, float] = {}
        if self.precise is not None:
            out["precision"] = float(np.count_nonzero(self.precise)) / m
        if self.recalled is not None:
            out["recall"] = float(self.recalled) / n
        if self.dens is not None and self.covered is not None:
            out["density"] = (1.0 / float(k_dc)) * (float(self.dens.sum()) / m)
            out["coverage"] = float(self.covered) / n
        return out


@dataclass
class CrossResult:
    """Per-item outcome of the real x fake pass (exact); real rows outside the block stay False."""

    tol: float
    precise: np.ndarray | None = None        # (M,) fake j inside some real k_pr-ball
    dens_count: np.ndarray | None = None     # (M,) number of real k_dc-balls holding fake j (strict)
    covered: np.ndarray | None = None        # (N,) real i has a fake inside its k_dc-ball (strict)
    cov_pairs: tuple[np.ndarray, np.ndarray] | None = None   # all (i, j) with d_ij < r_dc(i)
    recalled: np.ndarray | None = None       # (N,) real i inside some fake k_pr-ball
    rec_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (i, j, approx d2) candidates

    def counts(self) -> KnnCounts:
        return KnnCounts(
            None if self.precise is None else self.precise.astype(np.int64),
            self.dens_count,
            None if self.covered is None else int(np.count_nonzero(self.covered)),
            None if self.recalled is None else int(np.count_nonzero(self.recalled)))


def candidate_pairs(ops: Ops, a: FeatureSet, rows: np.ndarray, b_right: object, b_n: int,
                    col_thr: np.ndarray, tol: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (position in ``rows``, column of b) whose float32 squared distance is within ``tol`` above
    ``col_thr``: a superset of the pairs whose exact squared distance is <= ``col_thr``.
    ``b_right`` is b's augmented matrix already on the device."""
    out_r, out_c = [], []
    chunk = max(1, min(block, 1024))
    width = max(chunk, 1024)
    buf = ops.empty(chunk * width)
    scratch = ops.empty(chunk * width)
    for s in range(0, len(rows), chunk):
        rr = rows[s:s + chunk]
        left = ops.put(a.left(rr))
        lim = np.full(len(rr), tol)
        for j0, j1 in blocks(b_n, width):
            t = ops.tile(buf, left, b_right[j0:j1])  # type: ignore[index]
            ri, cj, _ = ops.pairs_below_outer(t, col_thr[j0:j1], lim, scratch)
            out_r.append(ri + s)
            out_c.append(cj + j0)
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_r), np.concatenate(out_c)


def cross(ops: Ops, real: FeatureSet, fake: FeatureSet, rr_pr: np.ndarray | None, rf_pr: np.ndarray | None,
          rr_dc: np.ndarray | None, block: int, rec_max: np.ndarray | None = None, keep_pairs: bool = False,
          rows: range | None = None) -> CrossResult:
    """One pass of real rows ``rows`` (default: all) x every fake sample, deciding every comparison exactly.

    ``rr_pr``/``rr_dc``: real radii (precision; density/coverage), ``rf_pr``: fake radii (recall), all
    indexed by global row. With ``rec_max`` (per-fake largest radius over bootstrap resamples) recall is
    not decided here; instead every pair within ``rec_max`` (+tol) is returned in ``rec_pairs`` with its
    float32 value. ``keep_pairs`` also returns the pairs inside the density/coverage balls.
    """
    n, m = real.n, fake.n
    want_p, want_dc = rr_pr is not None, rr_dc is not None
    want_r = rf_pr is not None or rec_max is not None
    p2 = None if rr_pr is None else rr_pr ** 2     # squared thresholds, for screening only
    q2 = None if rr_dc is None else rr_dc ** 2
    r2 = None if not want_r else (rec_max if rec_max is not None else rf_pr) ** 2
    # tile = d2 - base_i, base_i the largest wanted real threshold: every pair that can pass a real
    # threshold has tile value <= tol, so one sparse selection serves density, coverage and precision
    base = np.maximum(q2 if want_dc else 0.0, p2 if want_p else 0.0) * np.ones(n)
    thr_max = max([float(x.max()) for x in (p2, r2, q2) if x is not None] + [0.0])
    tol = error_bound(real, fake, offset_max=2 * thr_max) + 1e-12 * thr_max
    shift_p = None if not want_p else base - p2                  # d2 - P_i = tile + shift_p_i
    shift_dc = None if not want_dc else base - q2                # d2 - Q_i = tile + shift_dc_i

    res = CrossResult(tol)
    precise = np.zeros(m, dtype=bool)
    dens = np.zeros(m, dtype=np.int64)
    covered = np.zeros(n, dtype=bool)
    unsure_dc: list[tuple[np.ndarray, np.ndarray]] = []
    unsure_p: list[tuple[np.ndarray, np.ndarray]] = []
    sure_dc: list[tuple[np.ndarray, np.ndarray]] = []
    rec_found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rec_margin = np.full(n, np.inf)

    right = ops.put(fake.right())
    lock = threading.Lock()

    def row_block(b: tuple[int, int]) -> None:   # rows i0:i1 of real against every fake block
        i0, i1 = b
        buf = ops.empty(block * block)
        scratch = ops.empty(block * block) if want_r else None
        left = ops.put(real.left(slice(i0, i1), offset=base[i0:i1]))
        for j0, j1 in blocks(m, block):
            t = ops.tile(buf, left, right[j0:j1])
            if want_dc or want_p:
                r, c, v = ops.nonzero_le(t, tol)     # every pair with d2 <= base_i lies in here
                rg, cg = r + i0, c + j0
                if shift_dc is not None:
                    vd = v + shift_dc[rg]
                    sure = vd < -tol
                    mid = np.abs(vd) <= tol
                    with lock:
                        dens[j0:j1] += np.bincount(c[sure], minlength=j1 - j0)
                        covered[rg[sure]] = True
                        if keep_pairs:
                            sure_dc.append((rg[sure], cg[sure]))
                        unsure_dc.append((rg[mid], cg[mid]))
                if shift_p is not None:
                    vp = v + shift_p[rg]
                    mid = np.abs(vp) <= tol
                    with lock:
                        precise[cg[vp < -tol]] = True
                        unsure_p.append((rg[mid], cg[mid]))
            if r2 is not None and rec_max is None:     # rows i0:i1 belong to this worker alone
                mn = ops.rowmin_minus_cols(t, r2[j0:j1], scratch) + base[i0:i1]
                np.minimum(rec_margin[i0:i1], mn, out=rec_margin[i0:i1])
            elif r2 is not None:
                r, c, v = ops.pairs_below_outer(t, r2[j0:j1], tol - base[i0:i1], scratch)
                with lock:
                    rec_found.append((r + i0, c + j0, v + base[r + i0]))

    for_each(ops, blocks(n, block, rows), row_block)

    def cat(parts: list[tuple[np.ndarray, ...]], k: int) -> np.ndarray:
        return np.concatenate([u[k] for u in parts]) if parts else np.zeros(0, np.int64)

    if rr_dc is not None:
        ri, cj = cat(unsure_dc, 0), cat(unsure_dc, 1)
        inside = np.sqrt(exact_d2(real.src, ri, fake.src, cj)) < rr_dc[ri]
        np.add.at(dens, cj[inside], 1)
        covered[ri[inside]] = True
        res.dens_count, res.covered = dens, covered
        if keep_pairs:
            res.cov_pairs = (np.concatenate([cat(sure_dc, 0), ri[inside]]),
                             np.concatenate([cat(sure_dc, 1), cj[inside]]))
    if rr_pr is not None:
        ri, cj = cat(unsure_p, 0), cat(unsure_p, 1)
        inside = np.sqrt(exact_d2(real.src, ri, fake.src, cj)) <= rr_pr[ri]
        precise[cj[inside]] = True
        res.precise = precise
    if r2 is not None and rf_pr is not None and rec_max is None:
        recalled = rec_margin < -tol
        unsure = np.nonzero(np.abs(rec_margin) <= tol)[0]
        if len(unsure):
            ri, cj = candidate_pairs(ops, real, unsure, right, m, r2, tol, block)
            hit = np.sqrt(exact_d2(real.src, unsure[ri], fake.src, cj)) <= rf_pr[cj]
            recalled[unsure[np.unique(ri[hit])]] = True
        res.recalled = recalled
    elif want_r:
        res.rec_pairs = (cat(rec_found, 0), cat(rec_found, 1),
                         np.concatenate([u[2] for u in rec_found]) if rec_found else np.zeros(0))
    return res
