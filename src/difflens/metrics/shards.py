"""Combining the ranks' shares of extracted features under torchrun: the features gathered in rank order,
or their Gaussian statistics merged exactly without moving the features (generic collectives from
:mod:`difflens.distributed`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from difflens.distributed import DistContext, all_gather_array, get_context
from difflens.errors import DifflensError
from difflens.metrics.stats import GaussianStats


def merge_gaussian_stats(stats: GaussianStats, ctx: DistContext | None = None) -> GaussianStats:
    """Merge every rank's :class:`GaussianStats` into the statistics of the union.

    Each rank's ``(n, mean, M2)`` (float64) is gathered unchanged and folded with Chan's pairwise update
    (:meth:`GaussianStats.merge`) in rank order, starting from the empty statistics: every rank performs
    the same float64 operations on the same values, so all ranks return bit-identical statistics, equal
    to a single pass over the concatenated features to float64 rounding. Statistics with an unknown count
    (``n == -1``, from a pytorch-fid file) cannot be merged and raise DifflensError.
    """
    ctx = ctx or get_context()
    if not ctx.is_distributed:
        return stats
    if not stats.known_n:
        raise DifflensError("cannot merge statistics whose sample count is unknown across ranks.",
                            "compute the statistics with difflens, which records n")
    ns = all_gather_array(np.asarray([stats.n], dtype=np.int64), ctx)
    means = all_gather_array(np.asarray(stats.mean, dtype=np.float64)[None], ctx)
    m2s = all_gather_array(np.asarray(stats.m2, dtype=np.float64)[None], ctx)
    out = GaussianStats.empty(stats.dim)
    for n, mean, m2 in zip(ns.tolist(), means, m2s, strict=True):
        out = out.merge(GaussianStats(int(n), mean, m2))
    return out


def distributed_features_stats(local_features: Any, ctx: DistContext | None = None) -> GaussianStats:
    """Statistics of the union of every rank's feature rows, without gathering the features."""
    return merge_gaussian_stats(GaussianStats.from_features(local_features), ctx)


def combine_shards(features: Any, logits: Any | None, gather: bool, ctx: DistContext | None = None
                   ) -> tuple[Any | None, Any | None, GaussianStats | None]:
    """Combine the ranks' shares of one extracted set: ``(features, logits, stats)``.

    ``gather=True``: the features of every rank, concatenated in rank order (with contiguous shares, the
    single-process feature matrix row for row) and ``stats`` None. ``gather=False``: no features travel;
    ``stats`` are the exactly merged :class:`GaussianStats` (see :func:`merge_gaussian_stats`) and
    ``features`` None. Logits (IS), when given, are always gathered (C = 1008 columns)."""
    ctx = ctx or get_context()
    gathered_logits = all_gather_array(logits, ctx) if logits is not None else None
    if gather:
        return all_gather_array(features, ctx), gathered_logits, None
    stats = distributed_features_stats(np.asarray(features, dtype=np.float64), ctx)
    return None, gathered_logits, stats
