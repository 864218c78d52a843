"""Distributed runs on torch.distributed: one process per device, launched by ``torchrun`` or
``accelerate launch`` (NCCL on GPUs, gloo on CPUs), with merges that give the single-process numbers.

Launch::

    torchrun --nproc_per_node 4 -m difflens metrics ...          # one node, 4 GPUs
    accelerate launch --num_processes 4 -m difflens metrics ...  # same, through accelerate
    # two nodes of 8 GPUs (run on each node, R = 0 and 1):
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --master_addr HOST --master_port 29500 -m difflens

Without the launcher's variables (``WORLD_SIZE`` absent or 1) everything here runs as one process and every
collective is the identity, so library code calls these helpers unconditionally.

What is exact, and why:

* **Sharding** (:func:`shard_indices`): rank ``r`` of ``W`` gets one *contiguous* block of indices, block
  sizes differ by at most one (the first ``n % W`` ranks get one more). Contiguous blocks make a gather in
  rank order reproduce the single-process order, so gathered features are the single-process feature
  matrix row for row.
* **Gathers** (:func:`all_gather_array`): any dtype numpy arrays with a different first dimension on each
  rank (sizes are gathered first, blocks padded to the largest, gathered, trimmed), concatenated in rank
  order. Bytes travel unchanged: no float is summed or rounded on the way.
* **Gaussian statistics** (:func:`merge_gaussian_stats`): every rank's ``(n, mean, M2)`` in float64 is
  gathered and merged with Chan et al.'s pairwise update (1979) in rank order, the same folds on every rank,
  so all ranks hold bit-identical statistics, equal to a single pass to float64 rounding.
* **k-NN metrics** (:func:`distributed_prdc`): precision/recall/density/coverage are counts of comparisons.
  Each rank takes the rows of its shard (radii of its rows against the whole set, then its real rows
  against every fake sample). Every comparison is decided as in exact arithmetic (a float32 GEMM screens
  with a rigorous error bound, near-ties are decided on the float64 distance computed as
  :mod:`difflens.metrics.knn` computes it), so per-row results do not depend on the split; radii are
  gathered, booleans and counts summed as int64: the metrics are *exactly* the single-process values.
* **Sharded extraction** (:func:`shard_source`, :func:`combine_shards`): whole batches per rank, so each
  image is processed in the batch it is processed in by a single process; features are gathered only
  where a metric needs them, else the statistics are merged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from difflens.errors import DifflensError

T = TypeVar("T")

#: Variables torchrun and accelerate launch set for every process.
ENV_RANK = "RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"

#: Default collective timeout. Rank 0 may spend a long time alone (writing outputs) between collectives.
DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run.

    ``backend`` is None for a single-process run. ``device`` is the torch device this rank computes on:
    ``cuda:LOCAL_RANK`` with NCCL, ``cpu`` with gloo.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes result files."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's indices of ``range(n)`` (see :func:`shard_indices`)."""
        return shard_indices(n, self.rank, self.world_size)

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.is_distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[_cuda_index(self.device)])
            else:
                dist.barrier()

    def describe(self) -> dict[str, Any]:
        """Recorded in result files: how the run was split."""
        return {"world_size": self.world_size, "backend": self.backend or "none",
                "sharding": "contiguous" if self.is_distributed else "none"}

    @classmethod
    def from_env(cls, device: str | None = None, backend: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
        """Read the launcher's variables and join the process group (once per process).

        Single process when ``WORLD_SIZE`` is absent or 1: then torch is not even imported and
        ``device`` is the one asked for (default ``cpu``; callers pick their own default device). Reuses a
        process group someone else (a user's script, ``accelerate.Accelerator``) already initialised.
        Distributed: ``device`` ``cpu``, ``cuda`` (this rank's local GPU) or None (cuda when available);
        ``backend`` ``nccl``/``gloo``/None (nccl on cuda, else gloo).
        """
        return init_distributed(device=device, backend=backend, timeout_s=timeout_s)


_CONTEXT: DistContext | None = None
_INITIALISED_HERE = False


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DifflensError(f"environment variable {name}={raw!r} is not an integer.",
                            "launch with torchrun or accelerate launch, which set it") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when absent); imports nothing heavy."""
    return _env_int(ENV_WORLD_SIZE, 1) or 1


def env_rank() -> int:
    """``RANK`` from the environment (0 when absent); imports nothing heavy."""
    return _env_int(ENV_RANK, 0) or 0


def _cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _resolve_device(device: str | None, local_rank: int) -> str:
    import torch

    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if not device.startswith("cuda"):
        raise DifflensError(f"device {device!r} is not supported in a distributed run.",
                            "use cpu or cuda (each rank takes the GPU of its LOCAL_RANK)")
    if not torch.cuda.is_available():
        raise DifflensError(f"device {device} was asked for, but no CUDA device is available.",
                            "use --device cpu (the gloo backend)")
    count = torch.cuda.device_count()
    index = _cuda_index(device) if ":" in device else local_rank
    if index >= count:
        raise DifflensError(f"LOCAL_RANK {local_rank} needs GPU {index}, but this node has {count}.",
                            f"launch at most {count} processes per node (--nproc_per_node {count})")
    return f"cuda:{index}"


def init_distributed(device: str | None = None, backend: str | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """The process's :class:`DistContext`; joins the process group on the first call (see ``from_env``)."""
    global _CONTEXT, _INITIALISED_HERE
    if _CONTEXT is not None:
        return _CONTEXT
    world = env_world_size()
    already = False
    if "torch" in sys.modules:  # a group someone else opened; torch is not imported just to ask
        import torch.distributed as dist

        already = dist.is_available() and dist.is_initialized()
    if world <= 1 and not already:
        # one process: no torch import (FID from two statistics files stays light); device as asked
        _CONTEXT = DistContext(device="cpu" if device in (None, "", "auto", "cpu") else
                               _resolve_device(device, 0))
        return _CONTEXT
    import torch.distributed as dist
    if not dist.is_available():
        raise DifflensError("this torch build has no torch.distributed.", "install a standard torch wheel")
    if already:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int(ENV_LOCAL_RANK, rank) or 0
        be = str(dist.get_backend())
        dev = _resolve_device("cuda" if be == "nccl" else "cpu", local)
        if dev.startswith("cuda"):
            import torch

            torch.cuda.set_device(_cuda_index(dev))
        _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local, backend=be, device=dev)
        return _CONTEXT
    rank = _env_int(ENV_RANK, None)
    if rank is None:
        raise DifflensError(f"WORLD_SIZE={world} is set but RANK is not.",
                            "launch with torchrun or accelerate launch, which set both")
    if not 0 <= rank < world:
        raise DifflensError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world}).",
                            "launch with torchrun or accelerate launch")
    missing = [v for v in (ENV_MASTER_ADDR, ENV_MASTER_PORT) if not os.environ.get(v)]
    if missing:
        raise DifflensError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} is not.",
                            "launch with torchrun or accelerate launch, which set them")
    local = _env_int(ENV_LOCAL_RANK, rank) or 0
    dev = _resolve_device(device, local)
    be = backend or ("nccl" if dev.startswith("cuda") else "gloo")
    if be not in ("nccl", "gloo"):
        raise DifflensError(f"unknown backend {be!r}.", "use nccl (GPUs) or gloo (CPUs)")
    if be == "nccl" and not dev.startswith("cuda"):
        raise DifflensError("the nccl backend needs CUDA devices.", "use the gloo backend on CPUs")
    import torch

    kwargs: dict[str, Any] = {}
    if dev.startswith("cuda"):
        torch.cuda.set_device(_cuda_index(dev))
        if be == "nccl":
            kwargs["device_id"] = torch.device(dev)
    dist.init_process_group(backend=be, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    _INITIALISED_HERE = True
    import atexit

    atexit.register(shutdown_distributed)  # NCCL warns when a process exits with its group still open
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local, backend=be, device=dev)
    return _CONTEXT


def get_context() -> DistContext:
    """The current context, joining the process group if the launcher asked for one."""
    return _CONTEXT if _CONTEXT is not None else init_distributed()


def shutdown_distributed() -> None:
    """Leave the process group if this module joined it (safe to call more than once)."""
    global _CONTEXT, _INITIALISED_HERE
    if _INITIALISED_HERE:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CONTEXT = None
    _INITIALISED_HERE = False


@contextlib.contextmanager
def distributed_session(device: str | None = None, backend: str | None = None) -> Iterator[DistContext]:
    """``with distributed_session() as ctx:`` joins the group (if launched distributed) and leaves it."""
    ctx = init_distributed(device=device, backend=backend)
    try:
        yield ctx
    finally:
        shutdown_distributed()


def is_main() -> bool:
    """True on rank 0 (or in a single process). Does not join a process group: before one exists it reads
    ``RANK`` from the environment."""
    if _CONTEXT is not None:
        return _CONTEXT.is_main
    with contextlib.suppress(ImportError):
        if "torch" in sys.modules:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return dist.get_rank() == 0
    return env_rank() == 0


def barrier(ctx: DistContext | None = None) -> None:
    """Wait for every rank (no-op in a single process)."""
    (ctx or get_context()).barrier()


@contextlib.contextmanager
def main_first(ctx: DistContext | None = None) -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (e.g. rank 0 prepares a folder or a cache
    that the others then only read). An exception on rank 0 still releases the others, which then run the
    body themselves and usually meet the same error."""
    ctx = ctx or get_context()
    if not ctx.is_distributed:
        yield
        return
    if ctx.is_main:
        try:
            yield
        finally:
            ctx.barrier()
    else:
        ctx.barrier()
        yield


# ------------------------------------------------------------------------------------------- sharding


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


# ---------------------------------------------------------------------------------------- collectives

_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
_MAX_DIMS = 8


def _header(arr: Any) -> list[int]:
    name = str(arr.dtype)
    if name not in _DTYPES:
        raise DifflensError(f"cannot gather an array of dtype {name}.",
                            f"convert it to one of {', '.join(_DTYPES)}")
    if arr.ndim < 1 or arr.ndim > _MAX_DIMS:
        raise DifflensError(f"cannot gather a {arr.ndim}-d array.", f"pass 1 to {_MAX_DIMS} dimensions")
    return [_DTYPES.index(name), arr.ndim, *arr.shape, *([0] * (_MAX_DIMS - arr.ndim))]


def all_gather_array(array: Any, ctx: DistContext | None = None, concat: bool = True) -> Any:
    """Gather a numpy array from every rank, in rank order.

    The first dimension may differ between ranks (including 0); dtype and the other dimensions must
    agree. Returns the concatenation along the first axis (``concat=True``) or the list of per-rank
    arrays. Values travel as raw tensors: nothing is rounded. Single process: the array itself.
    """
    import numpy as np

    ctx = ctx or get_context()
    arr = np.asarray(array)
    header = _header(arr)
    if not ctx.is_distributed:
        return arr.copy() if concat else [arr.copy()]
    import torch
    import torch.distributed as dist

    head = torch.tensor(header, dtype=torch.int64, device=ctx.device)
    heads = [torch.empty_like(head) for _ in range(ctx.world_size)]
    dist.all_gather(heads, head)
    rows = [h.cpu().tolist() for h in heads]
    for r, h in enumerate(rows):
        if h[0] != header[0] or h[1] != header[1] or h[3:] != header[3:]:
            theirs = f"{_DTYPES[h[0]]} {tuple(h[2:2 + h[1]])}"
            ours = f"{_DTYPES[header[0]]} {arr.shape}"
            raise DifflensError(f"rank {r} holds a {theirs} array where rank {ctx.rank} holds {ours}.",
                                "every rank must gather arrays of one dtype and trailing shape")
    sizes = [h[2] for h in rows]
    tail = arr.shape[1:]
    out_dtype = arr.dtype
    if max(sizes) == 0:
        parts = [np.empty((0, *tail), dtype=out_dtype) for _ in sizes]
        return np.concatenate(parts) if concat else parts
    send = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr
    padded = np.zeros((max(sizes), *tail), dtype=send.dtype)
    padded[: arr.shape[0]] = send
    tensor = torch.from_numpy(padded).to(ctx.device)
    bufs = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(bufs, tensor)
    parts = [b[:s].cpu().numpy().astype(out_dtype, copy=False) for b, s in zip(bufs, sizes, strict=True)]
    return np.concatenate(parts) if concat else parts


def all_reduce_sum_int(values: Any, ctx: DistContext | None = None) -> Any:
    """Sum integer counts over ranks (int64, exact). Returns a numpy int64 array of the same shape."""
    import numpy as np

    ctx = ctx or get_context()
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"all_reduce_sum_int sums integers only (got {arr.dtype}); floats would depend on "
                        "the summation order")
    arr = arr.astype(np.int64)
    if not ctx.is_distributed:
        return arr
    import torch
    import torch.distributed as dist

    t = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1)).to(ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy().reshape(arr.shape)


def broadcast_json(obj: Any, ctx: DistContext | None = None, src: int = 0) -> Any:
    """Send a JSON-serialisable value from rank ``src`` to every rank (no pickle); returns it everywhere."""
    ctx = ctx or get_context()
    if not ctx.is_distributed:
        return obj
    import numpy as np
    import torch
    import torch.distributed as dist

    data = json.dumps(obj).encode("utf-8") if ctx.rank == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=ctx.device)
    dist.broadcast(size, src=src)
    n = int(size.item())
    buf = torch.zeros(max(n, 1), dtype=torch.uint8, device=ctx.device)
    if ctx.rank == src and n:
        buf[:n] = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).to(ctx.device)
    dist.broadcast(buf, src=src)
    return json.loads(bytes(buf[:n].cpu().numpy().tobytes()).decode("utf-8")) if n else None


def all_gather_json(obj: Any, ctx: DistContext | None = None) -> list[Any]:
    """Gather a small JSON-serialisable value from every rank, in rank order (no pickle)."""
    import numpy as np

    ctx = ctx or get_context()
    if not ctx.is_distributed:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
    parts = all_gather_array(data, ctx, concat=False)
    return [json.loads(p.tobytes().decode("utf-8")) for p in parts]


# ------------------------------------------------------------------------------------ exact merges


def merge_gaussian_stats(stats: Any, ctx: DistContext | None = None) -> Any:
    """Merge every rank's :class:`~difflens.metrics.stats.GaussianStats` into the statistics of the union.

    Each rank's ``(n, mean, M2)`` (float64) is gathered unchanged and folded with Chan's pairwise update
    (:meth:`GaussianStats.merge`) in rank order, starting from the empty statistics: every rank performs
    the same float64 operations on the same values, so all ranks return bit-identical statistics, equal
    to a single pass over the concatenated features to float64 rounding. Statistics with an unknown count
    (``n == -1``, from a pytorch-fid file) cannot be merged and raise DifflensError.
    """
    import numpy as np

    from difflens.metrics.stats import GaussianStats

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


def distributed_features_stats(local_features: Any, ctx: DistContext | None = None) -> Any:
    """Statistics of the union of every rank's feature rows, without gathering the features."""
    from difflens.metrics.stats import GaussianStats

    return merge_gaussian_stats(GaussianStats.from_features(local_features), ctx)


def distributed_knn_radii(feats: Any, k: int, ctx: DistContext | None = None, block_size: int = 1024,
                          device: str | None = None) -> Any:
    """:func:`difflens.metrics.knn.knn_radii` with the rows shared out: every rank holds all of ``feats``
    and computes the exact radii of its contiguous block of rows against the whole set; the blocks are
    gathered in rank order. Bit for bit the single-process radii (each is the exact (k+1)-th smallest
    float64 distance, however the work is split). Single process: ``knn.knn_radii`` itself."""
    ctx = ctx or get_context()
    if not ctx.is_distributed:
        from difflens.metrics import knn

        return knn.knn_radii(feats, int(k), block_size=block_size, device=device or ctx.device)
    return _sharded_radii(_KnnSet(feats, "Input", device or ctx.device), [int(k)], ctx, block_size)[int(k)]


# Exact k-NN pieces for sharded work. Decisions are those of exact arithmetic, as in
# difflens.metrics.knn: a float32 GEMM tile of squared distances ||a||^2 + ||b||^2 - 2 a.b screens every
# comparison with a rigorous error bound ``tol``; comparisons within ``tol`` of their threshold are decided
# on the float64 distance sqrt(sum((a - b)^2)) computed exactly as knn.py computes it. Results therefore do
# not depend on how rows are split, and equal knn.prdc's.

_U32 = 2.0 ** -24
_TILE_ELEMS = 1 << 22  # float32 elements per tile (16 MB; the float64 comparisons double it)


class _KnnSet:
    """Features as given (``src``, float32 or float64) and their float32 form on ``device``."""

    def __init__(self, feats: Any, name: str, device: str) -> None:
        import numpy as np
        import torch

        arr = np.asarray(feats)
        if arr.ndim != 2:
            raise DifflensError(f"{name} features must be a 2-D (N, D) array, got shape {arr.shape}.", None)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise DifflensError(f"{name} features must be real numbers, got dtype {arr.dtype}.", None)
        self.src = np.ascontiguousarray(arr) if arr.dtype == np.float32 else \
            np.ascontiguousarray(arr, dtype=np.float64)
        x32 = self.src if self.src.dtype == np.float32 else self.src.astype(np.float32)
        self.rounded = x32 is not self.src
        sq = np.einsum("ij,ij->i", x32.astype(np.float64), x32.astype(np.float64)) if len(x32) else \
            np.zeros(0)
        if not np.all(np.isfinite(sq)):
            raise DifflensError(f"{name} features contain NaN or infinite values (or overflow float32).",
                                "Check the extractor input.")
        self.norm_max = float(np.sqrt(sq.max())) * (1 + 1e-6) if len(sq) else 0.0
        self.x = torch.from_numpy(x32).to(device)
        self.sq = torch.from_numpy(sq.astype(np.float32)).to(device)

    @property
    def n(self) -> int:
        return int(self.src.shape[0])

    @property
    def dim(self) -> int:
        return int(self.src.shape[1])

    def tile(self, rows: range, other: _KnnSet) -> Any:
        """float32 squared distances of ``rows`` of self to every row of ``other`` (an approximation)."""
        t = self.sq[rows.start:rows.stop, None] + other.sq[None, :]
        return t.addmm_(self.x[rows.start:rows.stop], other.x.T, beta=1.0, alpha=-2.0)


def _knn_tol(a: _KnnSet, b: _KnnSet, offset_max: float = 0.0) -> float:
    """Rigorous bound on |float32 tile value - exact squared distance| (any summation order, TF32 off):
    1.25 (gamma_{D+2} + 8u)(2 max|a| max|b| + max|a|^2 + max|b|^2 + 2 offset), plus the float32 rounding
    of float64 input."""
    n = a.dim + 2
    gamma = n * _U32 / (1 - n * _U32)
    mag = 2 * a.norm_max * b.norm_max + a.norm_max ** 2 + b.norm_max ** 2 + 2 * abs(offset_max)
    tol = 1.25 * (gamma + 8 * _U32) * mag
    if a.rounded or b.rounded:
        tol += 2.5 * _U32 * (a.norm_max + b.norm_max) ** 2
    return tol + 1e-300


def _exact_d2(a: Any, ia: Any, b: Any, ib: Any) -> Any:
    """Float64 squared distances sum((a[ia] - b[ib])^2), computed as difflens.metrics.knn computes them."""
    import numpy as np

    out = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), 128):
        diff = np.subtract(a[ia[s:s + 128]], b[ib[s:s + 128]], dtype=np.float64)
        out[s:s + 128] = np.einsum("ij,ij->i", diff, diff)
    return out


def _chunks(rows: range, width: int, block: int) -> list[range]:
    size = max(1, min(block, _TILE_ELEMS // max(width, 1)))
    return [range(s, min(s + size, rows.stop)) for s in range(rows.start, rows.stop, size)]


def _sharded_radii(fs: _KnnSet, ks: Sequence[int], ctx: DistContext, block: int) -> dict[int, Any]:
    """Exact k-th neighbour distances (self excluded) of every row, each rank computing its block of rows
    against the whole set, gathered in rank order: ``{k: (N,) float64}``."""
    import numpy as np
    import torch

    from difflens.numerics import strict_float32

    ks = sorted({int(k) for k in ks})
    q = ks[-1] + 1
    if fs.n < q:
        raise DifflensError(f"k-NN with k={ks[-1]} needs at least {q} samples in a set, got {fs.n}.",
                            "Add images or lower k.")
    tol = _knn_tol(fs, fs)
    mine = ctx.shard(fs.n)
    local = np.empty((len(mine), q), dtype=np.float64)
    with strict_float32(), torch.inference_mode():
        for rows in _chunks(mine, fs.n, block):
            t = fs.tile(rows, fs)
            vq = t.kthvalue(q, dim=1).values.double()
            # every point whose exact distance is among the q smallest has a tile value <= vq + 2 tol
            ri, cj = (t.double() <= (vq + 2 * tol)[:, None]).nonzero(as_tuple=True)
            ri, cj = ri.cpu().numpy(), cj.cpu().numpy()
            e = _exact_d2(fs.src, ri + rows.start, fs.src, cj)
            order = np.lexsort((e, ri))
            starts = np.searchsorted(ri[order], np.arange(len(rows)))
            local[rows.start - mine.start:rows.stop - mine.start] = e[order][starts[:, None] + np.arange(q)]
    v = all_gather_array(local, ctx)
    return {k: np.sqrt(v[:, k]) for k in ks}


def _cross_counts(real: _KnnSet, rows: range, fake: _KnnSet, rr_pr: Any, rf_pr: Any, rr_dc: Any,
                  block: int) -> dict[str, Any]:
    """The real x fake pass for ``rows`` of the real set against every fake sample, per element:
    ``precision_hit`` (M,) bool (some row i has d(f_j, r_i) <= rr_pr[i]), ``density_count`` (M,) int64
    (rows i with d(f_j, r_i) < rr_dc[i]), ``recall_count`` (rows i with some d(r_i, f_j) <= rf_pr[j]) and
    ``coverage_count`` (rows i with some d(r_i, f_j) < rr_dc[i]). Radii are indexed by global row."""
    import numpy as np
    import torch

    from difflens.numerics import strict_float32

    m = fake.n
    want_p, want_r, want_dc = rr_pr is not None, rf_pr is not None, rr_dc is not None
    thr = [x[rows.start:rows.stop] ** 2 for x in (rr_pr, rr_dc) if x is not None]
    if want_r:
        thr.append(rf_pr ** 2)
    thr_max = max([float(x.max()) for x in thr if len(x)] + [0.0])
    tol = _knn_tol(real, fake) + 1e-12 * thr_max  # bounds |tile - d2|; margins are taken in float64
    dev = real.x.device

    def dev64(x: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(dev)

    p_hit = torch.zeros(m, dtype=torch.bool, device=dev)
    d_cnt = torch.zeros(m, dtype=torch.int64, device=dev)
    r_hit = torch.zeros(len(rows), dtype=torch.bool, device=dev)
    c_hit = torch.zeros(len(rows), dtype=torch.bool, device=dev)
    rf2 = dev64(rf_pr ** 2) if want_r else None
    bands: dict[str, list[tuple[Any, Any]]] = {"p": [], "d": [], "r": []}
    with strict_float32(), torch.inference_mode():
        for ch in _chunks(rows, m, block):
            t = real.tile(ch, fake).double()
            lo, hi = ch.start - rows.start, ch.stop - rows.start
            for key, radii in (("p", rr_pr), ("d", rr_dc)):
                if radii is None:
                    continue
                margin = t - dev64(radii[ch.start:ch.stop] ** 2)[:, None]   # d2 - r_i^2
                sure = margin < -tol
                if key == "p":
                    p_hit |= sure.any(dim=0)
                else:
                    d_cnt += sure.sum(dim=0)
                    c_hit[lo:hi] |= sure.any(dim=1)
                bi, bj = (margin.abs() <= tol).nonzero(as_tuple=True)
                bands[key].append((bi.cpu().numpy() + ch.start, bj.cpu().numpy()))
            if want_r:
                margin = t - rf2[None, :]                                    # d2 - rf_j^2
                r_hit[lo:hi] |= (margin < -tol).any(dim=1)
                bi, bj = (margin.abs() <= tol).nonzero(as_tuple=True)
                bands["r"].append((bi.cpu().numpy() + ch.start, bj.cpu().numpy()))

    def band(key: str) -> tuple[Any, Any, Any]:
        parts = bands[key]
        ri = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        cj = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return ri, cj, np.sqrt(_exact_d2(real.src, ri, fake.src, cj))

    out: dict[str, Any] = {}
    if want_p:  # near-threshold pairs decided on the float64 distance, with <= (Kynkaanniemi)
        hit = p_hit.cpu().numpy()
        ri, cj, d = band("p")
        hit[cj[d <= rr_pr[ri]]] = True
        out["precision_hit"] = hit
    if want_dc:  # strict < (Naeem)
        cnt = d_cnt.cpu().numpy()
        cov = c_hit.cpu().numpy()
        ri, cj, d = band("d")
        inside = d < rr_dc[ri]
        cnt += np.bincount(cj[inside], minlength=m).astype(np.int64)
        cov[ri[inside] - rows.start] = True
        out["density_count"] = cnt
        out["coverage_count"] = int(np.count_nonzero(cov))
    if want_r:
        rec = r_hit.cpu().numpy()
        ri, cj, d = band("r")
        rec[ri[d <= rf_pr[cj]] - rows.start] = True
        out["recall_count"] = int(np.count_nonzero(rec))
    return out


def distributed_prdc(real: Any, fake: Any, k_pr: int = 3, k_dc: int = 5, block_size: int = 1024,
                     device: str | None = None, metrics: Sequence[str] | None = None,
                     real_radii: dict[int, Any] | None = None, ctx: DistContext | None = None
                     ) -> dict[str, float]:
    """:func:`difflens.metrics.knn.prdc` with the work shared out over the ranks, exactly.

    Every rank holds all real (N, D) and fake (M, D) features (gather them with :func:`all_gather_array`).
    Rank r computes the k-NN radii of its contiguous block of real rows (and fake rows, for recall)
    against the whole set, then the real x fake pass for its block of real rows: recall and coverage of
    those rows, and for every fake sample whether one of those rows covers it (precision) and how many do
    (density). Booleans and counts are summed as int64 over the ranks, so every rank returns exactly the
    single-process values. Cost per rank: about (N^2 + M^2 + N M) D / W multiply-adds. ``device``
    defaults to the rank's device (``cuda:LOCAL_RANK`` under NCCL). Single process: ``knn.prdc`` itself.
    """
    import numpy as np

    from difflens.metrics import knn

    ctx = ctx or get_context()
    metrics = tuple(metrics) if metrics is not None else tuple(knn.ALL_METRICS)
    dev = device or ctx.device
    if not ctx.is_distributed:
        return knn.prdc(real, fake, k_pr=k_pr, k_dc=k_dc, block_size=block_size, device=dev,
                        metrics=metrics, real_radii=real_radii)
    unknown = sorted(set(metrics) - set(knn.ALL_METRICS))
    if unknown or not metrics:
        raise DifflensError(f"Unknown k-NN metrics: {', '.join(unknown) or '(none given)'}.",
                            f"Choose from {', '.join(knn.ALL_METRICS)}.")
    k_pr, k_dc = int(k_pr), int(k_dc)
    if k_pr < 1 or k_dc < 1:
        raise DifflensError(f"k must be at least 1, got k_pr={k_pr}, k_dc={k_dc}.", None)
    if int(block_size) < 1:
        raise DifflensError(f"block_size must be positive, got {block_size}.", None)
    want_p, want_r = "precision" in metrics, "recall" in metrics
    want_dc = "density" in metrics or "coverage" in metrics
    real_fs, fake_fs = _KnnSet(real, "Real", dev), _KnnSet(fake, "Fake", dev)
    if real_fs.dim != fake_fs.dim:
        raise DifflensError(f"Feature dimension mismatch: real D={real_fs.dim}, fake D={fake_fs.dim}.",
                            "Extract both sets with the same extractor and layer.")
    need_real = sorted({k for k, w in ((k_pr, want_p), (k_dc, want_dc)) if w})
    checks = (("real", real_fs.n, max(need_real, default=0)), ("fake", fake_fs.n, k_pr if want_r else 0))
    for label, count, k in checks:
        if k and count < k + 1:
            raise DifflensError(f"k-NN metrics with k={k} need at least {k + 1} {label} samples, got "
                                f"{count}.", "Add images or lower k.")
    radii = {k: np.asarray(real_radii[k], dtype=np.float64) for k in need_real
             if real_radii is not None and k in real_radii}
    for k, r in radii.items():
        if r.shape != (real_fs.n,):
            raise DifflensError(f"Precomputed real radii for k={k} have shape {r.shape}, expected "
                                f"({real_fs.n},).", "Compute them with knn_radii on the same real features.")
    missing = [k for k in need_real if k not in radii]
    if missing:
        radii.update(_sharded_radii(real_fs, missing, ctx, int(block_size)))
    rf = _sharded_radii(fake_fs, [k_pr], ctx, int(block_size))[k_pr] if want_r else None
    n, m = real_fs.n, fake_fs.n
    el = _cross_counts(real_fs, ctx.shard(n), fake_fs, radii[k_pr] if want_p else None, rf,
                       radii[k_dc] if want_dc else None, int(block_size))
    res: dict[str, float] = {}
    if want_p:
        hits = all_reduce_sum_int(el["precision_hit"].astype(np.int64), ctx)
        res["precision"] = float(np.count_nonzero(hits)) / m
    if want_r:
        res["recall"] = float(int(all_reduce_sum_int([el["recall_count"]], ctx)[0])) / n
    if want_dc:
        total = all_reduce_sum_int([int(el["density_count"].sum()), el["coverage_count"]], ctx)
        res["density"] = (1.0 / float(k_dc)) * (float(int(total[0])) / m)
        res["coverage"] = float(int(total[1])) / n
    return {key: res[key] for key in metrics}


# ------------------------------------------------------------------------------ sharded extraction


def shard_source(source: Any, ctx: DistContext | None = None, block: int = 1, min_items: int = 2
                 ) -> tuple[Any, bool]:
    """This rank's share of an image source (``FolderSource``/``ArraySource``: ``files`` or ``images``),
    in whole blocks of ``block`` items (the extraction batch size, so every image is processed in the
    same batch as in a single-process run), and whether it was sharded. A source too small to give
    every rank ``min_items`` items is not sharded: every rank then processes all of it."""
    import dataclasses

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


def total_rows(local: Any, ctx: DistContext | None = None) -> int:
    """Rows of the union of every rank's share (``len(local)`` summed over ranks)."""
    return int(all_reduce_sum_int([len(local)], ctx or get_context())[0])


def combine_shards(features: Any, logits: Any | None, gather: bool, ctx: DistContext | None = None
                   ) -> tuple[Any | None, Any | None, Any | None]:
    """Combine the ranks' shares of one extracted set: ``(features, logits, stats)``.

    ``gather=True``: the features of every rank, concatenated in rank order (with contiguous shares, the
    single-process feature matrix row for row) and ``stats`` None. ``gather=False``: no features travel;
    ``stats`` are the exactly merged :class:`GaussianStats` (see :func:`merge_gaussian_stats`) and
    ``features`` None. Logits (IS), when given, are always gathered (C = 1008 columns)."""
    import numpy as np

    ctx = ctx or get_context()
    gathered_logits = all_gather_array(logits, ctx) if logits is not None else None
    if gather:
        return all_gather_array(features, ctx), gathered_logits, None
    stats = distributed_features_stats(np.asarray(features, dtype=np.float64), ctx)
    return None, gathered_logits, stats
