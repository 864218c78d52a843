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
  Each rank computes the rows of its shard with the same row blocks and the same distance code as the
  single-process run; the per-row results (radii, booleans, counts) are gathered or summed as integers, so
  the metrics are *exactly* the single-process values, not merely close.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
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

        Single process when ``WORLD_SIZE`` is absent or 1. Reuses a process group someone else (a user's
        script, ``accelerate.Accelerator``) already initialised. ``device``: ``cpu``, ``cuda`` (this
        rank's local GPU) or None (cuda when available). ``backend``: ``nccl``/``gloo``/None (nccl on
        cuda, else gloo).
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
    import torch.distributed as dist

    already = dist.is_available() and dist.is_initialized()
    if world <= 1 and not already:
        _CONTEXT = DistContext(device=_resolve_device(device, 0))
        return _CONTEXT
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
        import sys

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
    gathered in rank order. Equal to the single-process radii bit for bit (each radius is the exact
    (k+1)-th smallest float64 distance, whatever the blocking)."""
    ctx = ctx or get_context()
    if not ctx.is_distributed:
        from difflens.metrics import knn

        return knn.knn_radii(feats, int(k), block_size=block_size, device=device or ctx.device)
    return _sharded_radii(feats, [int(k)], ctx, block_size, device)[int(k)]


def _sharded_radii(feats: Any, ks: Sequence[int], ctx: DistContext, block_size: int,
                   device: str | None) -> dict[int, Any]:
    import numpy as np

    from difflens.metrics import knn

    dev = device or ctx.device
    q = max(ks) + 1
    n = int(np.asarray(feats).shape[0])
    if n < q:
        raise DifflensError(f"k-NN with k={q - 1} needs at least {q} samples in a set, got {n}.",
                            "add images or lower k")
    rows = np.arange(n, dtype=np.int64)[ctx.shard(n).start:ctx.shard(n).stop]
    with knn._fp32_exact_matmul():
        fs = knn._prepare(feats, "Input", dev)
        v, _ = knn._exact_rows_topq(fs, rows, q, knn._tol(fs, fs), knn._check_block(block_size))
        del fs
    v = all_gather_array(np.ascontiguousarray(v, dtype=np.float64), ctx)
    return {k: np.sqrt(v[:, k]) for k in ks}


def _cross_elements(real: Any, fake: Any, rr_pr: Any, rf_pr: Any, rr_dc: Any, block: int) -> dict[str, Any]:
    """Per-element results of the real x fake pass of :func:`difflens.metrics.knn.prdc` (same tiles,
    same float32 screening with a rigorous bound, same float64 decisions near a threshold), for the rows
    of ``real`` given here against every fake sample:

    ``precision_hit`` (M,) bool: some real row i has d(f_j, r_i) <= rr_pr[i];
    ``recall_hit`` (N,) bool: some fake j has d(r_i, f_j) <= rf_pr[j];
    ``density_count`` (M,) int64: number of real rows i with d(f_j, r_i) < rr_dc[i];
    ``covered`` (N,) bool: min_j d(r_i, f_j) < rr_dc[i].
    """
    import numpy as np
    import torch

    from difflens.metrics import knn

    dev = real.x.device
    n, m = real.n, fake.n
    want_p, want_r, want_dc = rr_pr is not None, rf_pr is not None, rr_dc is not None
    out: dict[str, Any] = {}
    if n == 0:  # an empty share of the real rows decides nothing
        if want_p:
            out["precision_hit"] = np.zeros(m, dtype=bool)
        if want_r:
            out["recall_hit"] = np.zeros(0, dtype=bool)
        if want_dc:
            out["density_count"] = np.zeros(m, dtype=np.int64)
            out["covered"] = np.zeros(0, dtype=bool)
        return out
    p2 = None if rr_pr is None else rr_pr ** 2
    r2 = None if rf_pr is None else rf_pr ** 2
    q2 = None if rr_dc is None else rr_dc ** 2
    base = q2 if want_dc else (p2 if want_p else np.zeros(n))
    thr_max = max([float(x.max()) for x in (p2, r2, q2) if x is not None] + [0.0])
    tol = knn._tol(real, fake, offset_max=2 * thr_max) + 1e-12 * thr_max

    def t64(x: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(dev)

    row_off = (t64(real.sq.cpu().numpy().astype(np.float64) - base)).float()
    shift_p = t64(base - p2).float() if want_p else None
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
    for i0, i1 in knn._blocks(n, block):
        for j0, j1 in knn._blocks(m, block):
            t = knn._tile(buf, real, i0, i1, fake, j0, j1, row_off=row_off)   # d2 - base_i
            if want_dc:
                torch.minimum(cov_min[i0:i1], t.amin(dim=1), out=cov_min[i0:i1])
                dens_lo[j0:j1] += (t < -tol).sum(dim=0)
                dens_hi[j0:j1] += (t <= tol).sum(dim=0)
            if want_r:
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

    if want_p:
        pm = prec_min.double().cpu().numpy()
        inside = pm < -tol
        unsure = np.nonzero(np.abs(pm) <= tol)[0]
        if len(unsure):
            rj, ci = knn._candidate_pairs(fake, unsure, real, None, p2, tol, block)
            e = knn._exact_d2(fake.src, unsure[rj], real.src, ci)
            hit = np.sqrt(e) <= rr_pr[ci]
            inside[unsure[np.unique(rj[hit])]] = True
        out["precision_hit"] = inside
    if want_r:
        rm = rec_min.double().cpu().numpy()
        inside = rm < -tol
        unsure = np.nonzero(np.abs(rm) <= tol)[0]
        if len(unsure):
            ri, cj = knn._candidate_pairs(real, unsure, fake, None, r2, tol, block)
            e = knn._exact_d2(real.src, unsure[ri], fake.src, cj)
            hit = np.sqrt(e) <= rf_pr[cj]
            inside[unsure[np.unique(ri[hit])]] = True
        out["recall_hit"] = inside
    if want_dc:
        lo = dens_lo.cpu().numpy()
        hi = dens_hi.cpu().numpy()
        count = lo.copy()
        unsure_cols = np.nonzero(hi != lo)[0]
        if len(unsure_cols):  # columns with a pair near its threshold: every pair recounted exactly
            rj, ci = knn._candidate_pairs(fake, unsure_cols, real, None, q2, tol, block)
            e = knn._exact_d2(fake.src, unsure_cols[rj], real.src, ci)
            hit = np.sqrt(e) < rr_dc[ci]
            count[unsure_cols] = np.bincount(rj[hit], minlength=len(unsure_cols))
        out["density_count"] = count.astype(np.int64)
        cm = cov_min.double().cpu().numpy()
        covered = cm < -tol
        unsure = np.nonzero(np.abs(cm) <= tol)[0]
        if len(unsure):
            ri, cj = knn._candidate_pairs(real, unsure, fake, q2[unsure], None, tol, block)
            e = knn._exact_d2(real.src, unsure[ri], fake.src, cj)
            hit = np.sqrt(e) < rr_dc[unsure[ri]]
            covered[unsure[np.unique(ri[hit])]] = True
        out["covered"] = covered
    return out


def distributed_prdc(real: Any, fake: Any, k_pr: int = 3, k_dc: int = 5, block_size: int = 1024,
                     device: str | None = None, metrics: Sequence[str] | None = None,
                     real_radii: dict[int, Any] | None = None, ctx: DistContext | None = None
                     ) -> dict[str, float]:
    """:func:`difflens.metrics.knn.prdc` with the work shared out over the ranks, exactly.

    Every rank holds all real (N, D) and fake (M, D) features (gather them with :func:`all_gather_array`).
    Rank r computes the k-NN radii of its contiguous block of real rows (and of fake rows, for recall)
    against the whole set, then the real x fake pass for its block of real rows: recall and coverage of
    those rows, and for every fake sample whether one of those rows covers it (precision) and how many do
    (density). Booleans are OR-ed and counts summed as int64 across ranks, so the results are the
    single-process values exactly, on every rank. Cost per rank: (N^2 + M^2 + N M) D / W multiply-adds.
    ``device`` defaults to the rank's device (``cuda:LOCAL_RANK`` under NCCL).
    """
    import numpy as np

    from difflens.metrics import knn

    ctx = ctx or get_context()
    metrics = tuple(metrics) if metrics is not None else knn.ALL_METRICS
    if not ctx.is_distributed:
        return knn.prdc(real, fake, k_pr=k_pr, k_dc=k_dc, block_size=block_size, device=device or ctx.device,
                        metrics=metrics, real_radii=real_radii)
    unknown = sorted(set(metrics) - set(knn.ALL_METRICS))
    if unknown or not metrics:
        raise DifflensError(f"Unknown k-NN metrics: {', '.join(unknown) or '(none given)'}.",
                            f"Choose from {', '.join(knn.ALL_METRICS)}.")
    k_pr, k_dc = int(k_pr), int(k_dc)
    if k_pr < 1 or k_dc < 1:
        raise DifflensError(f"k must be at least 1, got k_pr={k_pr}, k_dc={k_dc}.", None)
    block = knn._check_block(block_size)
    dev = device or ctx.device
    want_p, want_r = "precision" in metrics, "recall" in metrics
    want_dc = "density" in metrics or "coverage" in metrics
    real_a, fake_a = np.asarray(real), np.asarray(fake)
    if real_a.ndim != 2 or fake_a.ndim != 2:
        raise DifflensError(f"Features must be 2-D (N, D) arrays, got {real_a.shape} and {fake_a.shape}.",
                            None)
    if real_a.shape[1] != fake_a.shape[1]:
        raise DifflensError(f"Feature dimension mismatch: real D={real_a.shape[1]}, "
                            f"fake D={fake_a.shape[1]}.",
                            "Extract both sets with the same extractor and layer.")
    need_real = sorted({k for k, w in ((k_pr, want_p), (k_dc, want_dc)) if w})
    checks = (("real", real_a, max(need_real, default=0)), ("fake", fake_a, k_pr if want_r else 0))
    for label, arr, k in checks:
        if k and arr.shape[0] < k + 1:
            raise DifflensError(f"k-NN metrics with k={k} need at least {k + 1} {label} samples, got "
                                f"{arr.shape[0]}.", "Add images or lower k.")
    radii = {k: np.asarray(real_radii[k], dtype=np.float64) for k in need_real
             if real_radii is not None and k in real_radii}
    for k, r in radii.items():
        if r.shape != (real_a.shape[0],):
            raise DifflensError(f"Precomputed real radii for k={k} have shape {r.shape}, expected "
                                f"({real_a.shape[0]},).",
                                "Compute them with knn_radii on the same real features.")
    missing = [k for k in need_real if k not in radii]
    if missing:
        radii.update(_sharded_radii(real_a, missing, ctx, block, dev))
    rf = _sharded_radii(fake_a, [k_pr], ctx, block, dev)[k_pr] if want_r else None

    n, m = real_a.shape[0], fake_a.shape[0]
    rows = ctx.shard(n)
    with knn._fp32_exact_matmul():
        real_fs = knn._prepare(real_a[rows.start:rows.stop], "Real", dev)
        fake_fs = knn._prepare(fake_a, "Fake", dev)
        el = _cross_elements(real_fs, fake_fs,
                             radii[k_pr][rows.start:rows.stop] if want_p else None, rf,
                             radii[k_dc][rows.start:rows.stop] if want_dc else None, block)
        del real_fs, fake_fs
    res: dict[str, float] = {}
    if want_p:
        hits = all_reduce_sum_int(el["precision_hit"].astype(np.int64), ctx)
        res["precision"] = float(np.count_nonzero(hits)) / m
    if want_r:
        res["recall"] = float(int(all_reduce_sum_int([np.count_nonzero(el["recall_hit"])], ctx)[0])) / n
    if want_dc:
        count = int(all_reduce_sum_int([int(el["density_count"].sum())], ctx)[0])
        res["density"] = (1.0 / float(k_dc)) * (float(count) / m)
        res["coverage"] = float(int(all_reduce_sum_int([np.count_nonzero(el["covered"])], ctx)[0])) / n
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
