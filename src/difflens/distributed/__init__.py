"""Distributed runs on torch.distributed: one process per device, launched by ``torchrun`` or
``accelerate launch`` (NCCL on GPUs, gloo on CPUs), with merges that give the single-process numbers.

Launch::

    torchrun --nproc_per_node 4 -m difflens metrics ...          # one node, 4 GPUs
    accelerate launch --num_processes 4 -m difflens metrics ...  # same, through accelerate
    # two nodes of 8 GPUs (run on each node, R = 0 and 1):
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --master_addr HOST --master_port 29500 -m difflens

Without the launcher's variables (``WORLD_SIZE`` absent or 1) everything here runs as one process and every
collective is the identity, so library code calls these helpers unconditionally.

This package is generic: it knows ranks, shards and arrays, and imports nothing from
:mod:`difflens.metrics` (metrics use it, not the other way round). Modules:

- :mod:`.context`: :class:`DistContext`, joining and leaving the process group, ``main_first``
- :mod:`.sharding`: which contiguous block of indices each rank takes (pure arithmetic)
- :mod:`.shares`: a rank's share of an image source, in whole batches
- :mod:`.collectives`: gathers, broadcasts and integer sums of numpy arrays and JSON values

What is exact, and why:

* **Sharding** (:func:`shard_indices`): rank ``r`` of ``W`` gets one *contiguous* block of indices, block
  sizes differ by at most one (the first ``n % W`` ranks get one more). Contiguous blocks make a gather in
  rank order reproduce the single-process order, so gathered features are the single-process feature
  matrix row for row.
* **Gathers** (:func:`all_gather_array`): any dtype numpy arrays with a different first dimension on each
  rank (sizes are gathered first, blocks padded to the largest, gathered, trimmed), concatenated in rank
  order. Bytes travel unchanged: no float is summed or rounded on the way. **Sums**
  (:func:`all_reduce_sum_int`): integers only, as int64, so the result does not depend on the order.
* Users: Gaussian statistics are merged by :mod:`difflens.metrics.shards` (Chan's update in rank order),
  k-NN metrics by :func:`difflens.metrics.knn.distributed_prdc` (rows sharded, counts summed; the
  exactness argument is in :mod:`difflens.metrics.knn`).
* **Sharded extraction** (:func:`shard_source`): whole batches per rank, so each image is processed in
  the batch it is processed in by a single process.
"""

from __future__ import annotations

from difflens.distributed.collectives import (
    all_gather_array,
    all_gather_json,
    all_reduce_sum_int,
    broadcast_json,
    total_rows,
)
from difflens.distributed.context import (
    DEFAULT_TIMEOUT_S,
    ENV_LOCAL_RANK,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_RANK,
    ENV_WORLD_SIZE,
    DistContext,
    barrier,
    distributed_session,
    env_rank,
    env_world_size,
    get_context,
    init_distributed,
    is_main,
    main_first,
    shutdown_distributed,
)
from difflens.distributed.sharding import aligned_shard, shard_indices, shard_list
from difflens.distributed.shares import shard_source

__all__ = [
    "DEFAULT_TIMEOUT_S", "ENV_LOCAL_RANK", "ENV_MASTER_ADDR", "ENV_MASTER_PORT", "ENV_RANK", "ENV_WORLD_SIZE",
    "DistContext", "aligned_shard", "all_gather_array", "all_gather_json", "all_reduce_sum_int", "barrier",
    "broadcast_json", "distributed_session", "env_rank", "env_world_size", "get_context", "init_distributed",
    "is_main", "main_first", "shard_indices", "shard_list", "shard_source", "shutdown_distributed",
    "total_rows",
]
