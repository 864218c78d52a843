"""Where this process stands in a distributed run: the launcher's variables, the process group, the
:class:`DistContext` every other helper takes, and rank-0-first sections."""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from difflens.distributed.sharding import shard_indices
from difflens.errors import DifflensError

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

