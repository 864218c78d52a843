"""Collectives over numpy arrays and JSON values, in rank order, nothing rounded on the way; the
identity in a single process. torch is imported only in a distributed run."""

from __future__ import annotations

import json
from typing import Any

from difflens.distributed.context import DistContext, get_context
from difflens.errors import DifflensError

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



def total_rows(local: Any, ctx: DistContext | None = None) -> int:
    """Rows of the union of every rank's share (``len(local)`` summed over ranks)."""
    return int(all_reduce_sum_int([len(local)], ctx or get_context())[0])

