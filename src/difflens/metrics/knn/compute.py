"""Public entry points of the k-NN engine: radii and precision/recall/density/coverage, in one process
or with the rows shared out over the ranks of a torch.distributed run (same kernels, same numbers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.knn import backend
from difflens.metrics.knn.cross import KnnCounts, cross
from difflens.metrics.knn.exact import FeatureSet, check_block, prepare, prepare_pair
from difflens.metrics.knn.radii import sq_radii

if TYPE_CHECKING:
    from difflens.distributed import DistContext

ALL_METRICS = ("precision", "recall", "density", "coverage")


@dataclass(frozen=True)
class Request:
    """A checked request: which metrics, which k, which real radii they need."""

    metrics: tuple[str, ...]
    k_pr: int
    k_dc: int
    block: int
    want_p: bool
    want_r: bool
    want_dc: bool
    need_real: tuple[int, ...]      # the k of the real radii the metrics need

    @classmethod
    def check(cls, metrics: Sequence[str], k_pr: int, k_dc: int, block_size: int) -> Request:
        chosen = tuple(metrics)
        unknown = sorted(set(chosen) - set(ALL_METRICS))
        if unknown or not chosen:
            raise DifflensError(f"Unknown k-NN metrics: {', '.join(unknown) or '(none given)'}.",
                                f"Choose from {', '.join(ALL_METRICS)}.")
        k_pr, k_dc = int(k_pr), int(k_dc)
        if k_pr < 1 or k_dc < 1:
            raise DifflensError(f"k must be at least 1, got k_pr={k_pr}, k_dc={k_dc}.", None)
        block = check_block(block_size)
        want_p, want_r = "precision" in chosen, "recall" in chosen
        want_dc = "density" in chosen or "coverage" in chosen
        need_real = tuple(sorted({k for k, w in ((k_pr, want_p), (k_dc, want_dc)) if w}))
        return cls(chosen, k_pr, k_dc, block, want_p, want_r, want_dc, need_real)

    def given_radii(self, real_radii: dict[int, np.ndarray] | None, real_n: int) -> dict[int, np.ndarray]:
        """The caller's real radii (float64) that the metrics need, checked against the real set."""
        radii = {k: np.asarray(real_radii[k], dtype=np.float64) for k in self.need_real
                 if real_radii is not None and k in real_radii}
        for k, r in radii.items():
            if r.shape != (real_n,):
                raise DifflensError(
                    f"Precomputed real radii for k={k} have shape {r.shape}, expected ({real_n},).",
                    "Compute them with knn_radii on the same real features.")
        return radii

    def check_sizes(self, n: int, m: int) -> None:
        checks = (("real", n, max(self.need_real, default=0)), ("fake", m, self.k_pr if self.want_r else 0))
        for label, count, k in checks:
            if k and count < k + 1:
                raise DifflensError(
                    f"k-NN metrics with k={k} need at least {k + 1} {label} samples, got {count}.",
                    "Add images or lower k.")


def radii_of(ops: backend.Ops, fs: FeatureSet, ks: Sequence[int], block: int,
             ctx: DistContext | None = None) -> dict[int, np.ndarray]:
    """Exact radii (not squared) of every row for each k. With a distributed ``ctx`` each rank computes
    its contiguous block of rows and the blocks are gathered in rank order (float64 bytes unchanged)."""
    if ctx is None or not ctx.is_distributed:
        return {k: np.sqrt(v) for k, v in sq_radii(ops, fs, ks, block).items()}
    from difflens.distributed import all_gather_array

    local = sq_radii(ops, fs, ks, block, rows=ctx.shard(fs.n))
    return {k: np.sqrt(all_gather_array(v, ctx)) for k, v in local.items()}


def _run(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int, block_size: int, device: str,
         metrics: Sequence[str], real_radii: dict[int, np.ndarray] | None, ctx: DistContext | None
         ) -> dict[str, float]:
    """The one driver: radii, then the real x fake counts of this process's real rows, summed over ranks."""
    req = Request.check(metrics, k_pr, k_dc, block_size)
    ops = backend.ops_for(device)
    real_fs, fake_fs = prepare_pair(real, fake)
    radii = req.given_radii(real_radii, real_fs.n)
    req.check_sizes(real_fs.n, fake_fs.n)
    share = ctx if ctx is not None and ctx.is_distributed else None   # None: this process does every row
    with backend.strict_matmul(ops):
        missing = [k for k in req.need_real if k not in radii]
        if missing:
            radii.update(radii_of(ops, real_fs, missing, req.block, share))
        rf = radii_of(ops, fake_fs, [req.k_pr], req.block, share)[req.k_pr] if req.want_r else None
        res = cross(ops, real_fs, fake_fs, radii.get(req.k_pr) if req.want_p else None, rf,
                    radii.get(req.k_dc) if req.want_dc else None, req.block,
                    rows=None if share is None else share.shard(real_fs.n))
    counts: KnnCounts = res.counts()
    if share is not None:   # disjoint row blocks: their counts add up to the whole set's
        from difflens.distributed import all_reduce_sum_int

        counts = counts.from_vector(all_reduce_sum_int(counts.to_vector(), share))
    summary = counts.summary(real_fs.n, fake_fs.n, req.k_dc)
    return {key: summary[key] for key in req.metrics}


def prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5, block_size: int = 1024,
         device: str = "cpu", metrics: Sequence[str] = ALL_METRICS,
         real_radii: dict[int, np.ndarray] | None = None) -> dict[str, float]:
    """Exact precision/recall (k=``k_pr``, ``<=``) and density/coverage (k=``k_dc``, ``<``).

    ``real_radii`` maps k to precomputed real-set radii (from :func:`knn_radii` or
    :func:`knn_radii_many`), so that bootstrap resamples of the fake set do not recompute them.
    Returns the requested metrics as floats (exact ratios of counts).
    """
    return _run(real, fake, k_pr, k_dc, block_size, device, metrics, real_radii, None)


def distributed_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5,
                     block_size: int = 1024, device: str | None = None,
                     metrics: Sequence[str] | None = None, real_radii: dict[int, np.ndarray] | None = None,
                     ctx: DistContext | None = None) -> dict[str, float]:
    """:func:`prdc` with the rows shared out over the ranks of a torchrun run, exactly.

    Every rank holds all real (N, D) and fake (M, D) features. Rank r computes the radii of its
    contiguous block of real rows (and fake rows, for recall), gathered in rank order, then the real x
    fake pass of its block of real rows; the :class:`~difflens.metrics.knn.cross.KnnCounts` are summed as
    int64 over the ranks, so every rank returns exactly the single-process values. Cost per rank: about
    (N^2 + M^2 + N M) D / W multiply-adds. ``ctx`` defaults to the launcher's context, ``device`` to the
    rank's device (``cuda:LOCAL_RANK`` under NCCL). Single process: :func:`prdc` itself.
    """
    from difflens.distributed import get_context

    ctx = ctx or get_context()
    return _run(real, fake, k_pr, k_dc, block_size, device or ctx.device,
                ALL_METRICS if metrics is None else metrics, real_radii, ctx)


def knn_radii_many(feats: np.ndarray, ks: Sequence[int], block_size: int = 1024, device: str = "cpu",
                   ctx: DistContext | None = None) -> dict[int, np.ndarray]:
    """Exact k-th neighbour distances (self excluded) for several k from one pass: ``{k: (N,) float64}``.
    With a distributed ``ctx`` the rows are shared out over the ranks (same values)."""
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise DifflensError(f"k must be at least 1, got {ks}.", None)
    block = check_block(block_size)
    ops = backend.ops_for(device)
    fs = prepare(feats, "Input")
    with backend.strict_matmul(ops):
        return radii_of(ops, fs, ks, block, ctx)


def knn_radii(feats: np.ndarray, k: int, block_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Exact distance from each row to its k-th nearest neighbour in the same set, self excluded
    (the (k+1)-th smallest distance counting the self-distance 0), float64 (N,)."""
    return knn_radii_many(feats, [k], block_size, device)[int(k)]


def distributed_knn_radii(feats: np.ndarray, k: int, ctx: DistContext | None = None, block_size: int = 1024,
                          device: str | None = None) -> np.ndarray:
    """:func:`knn_radii` with the rows shared out over the ranks: bit for bit the single-process radii
    (each is the exact (k+1)-th smallest float64 distance, however the rows are split)."""
    from difflens.distributed import get_context

    ctx = ctx or get_context()
    return knn_radii_many(feats, [k], block_size, device or ctx.device, ctx)[int(k)]
