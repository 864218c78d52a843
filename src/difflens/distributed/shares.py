"""This rank's share of an image source: whole extraction batches, contiguous, in rank order."""

from __future__ import annotations

import dataclasses
from typing import Any

from difflens.distributed.context import DistContext, get_context
from difflens.distributed.sharding import aligned_shard


def shard_source(source: Any, ctx: DistContext | None = None, block: int = 1, min_items: int = 2
                 ) -> tuple[Any, bool]:
    """This rank's share of an image source (``FolderSource``/``ArraySource``: ``files`` or ``images``),
    in whole blocks of ``block`` items (the extraction batch size, so every image is processed in the
    same batch as in a single-process run), and whether it was sharded. A source too small to give
    every rank ``min_items`` items is not sharded: every rank then processes all of it."""
    ctx = ctx or get_context()
    n = int(source.n)
    if not ctx.is_distributed:
        return source, False
    shares = [aligned_shard(n, r, ctx.world_size, block) for r in range(ctx.world_size)]
    if min(len(s) for s in shares) < min_items:
        return source, False
    mine = shares[ctx.rank]
    if hasattr(source, "files"):
        return dataclasses.replace(source, files=list(source.files[mine.start:mine.stop])), True
    return dataclasses.replace(source, images=source.images[mine.start:mine.stop]), True

