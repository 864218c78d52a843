"""Sharding: which contiguous block of items each rank takes, so that a gather in rank order restores the
single-process order. Pure index arithmetic (no process group needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_indices(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)``.

    Blocks are in rank order and differ in size by at most one (the first ``n % world`` ranks get one
    more), so ``concat(shard_indices(n, r, world) for r in range(world)) == range(n)``: a gather in rank
    order restores the single-process order. Ranks beyond ``n`` get an empty range.
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1 (got {world})")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard_list(items: Sequence[T], rank: int, world: int, block: int = 1) -> list[T]:
    """Rank ``rank``'s contiguous block of ``items``: the blocks of :func:`shard_indices` for ``block=1``,
    of :func:`aligned_shard` otherwise (whole groups of ``block`` items, e.g. whole pipeline batches)."""
    n = len(items)
    r = shard_indices(n, rank, world) if block == 1 else aligned_shard(n, rank, world, block)
    return list(items[r.start:r.stop])


def aligned_shard(n: int, rank: int, world: int, block: int) -> range:
    """Like :func:`shard_indices`, but every boundary is a multiple of ``block`` (except the end ``n``):
    whole blocks of ``block`` rows are shared out, so each rank computes exactly the row blocks a
    single-process blockwise loop computes."""
    if block < 1:
        raise ValueError(f"block must be >= 1 (got {block})")
    blocks = -(-n // block)
    b = shard_indices(blocks, rank, world)
    return range(min(n, b.start * block), min(n, b.stop * block))
