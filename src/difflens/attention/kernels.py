"""The CUDA attention kernels behind ``F.scaled_dot_product_attention``, called as torch calls them but with
their log-sum-exp kept (used by :class:`difflens.attention.lse.SdpaTap` on CUDA).

:func:`cuda_kernel_call` mirrors ``aten::scaled_dot_product_attention`` in torch's
``aten/src/ATen/native/transformers/attention.cpp`` (torch 2.6-2.14): the argument preparation per backend
(``pad_last_dim``, ``calculate_scale``, ``convert_boolean_attn_mask``, ``preprocess_mask``). It only builds
arguments (testable on CPU tensors); the tap runs the op and checks the output against the real call on
each layer's first captured call, so a torch version that prepares arguments differently is detected and
that layer falls back to the replay route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_FLASH = 1       # int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
_EFFICIENT = 2   # EFFICIENT_ATTENTION
_CUDNN = 3       # CUDNN_ATTENTION


@dataclass(frozen=True)
class KernelCall:
    """One CUDA attention kernel call: ``getattr(torch.ops.aten, op)(*args, **kwargs)``, output sliced back to
    ``head_dim``; ``mask`` is the additive mask the kernel adds (for the probabilities), or None."""

    backend: str
    op: str
    args: tuple
    kwargs: dict[str, Any]
    head_dim: int
    mask: Any | None


def _pad_last(t: Any, alignment: int, always: bool = False) -> Any:
    """Zero-pad the last dim: torch's ``pad_last_dim<alignment, false>`` (up to a multiple of ``alignment``,
    nothing when already one) or, ``always``, its ``pad_bias`` (by ``alignment - n % alignment``)."""
    import torch.nn.functional as F

    n = int(t.shape[-1])
    return t if n % alignment == 0 and not always else F.pad(t, (0, alignment - n % alignment))


def _aligned(t: Any, alignment: int) -> bool:
    """torch's ``aligned_tensor<alignment>``: every stride but the last a multiple, the last one 1."""
    return all(t.stride(i) % alignment == 0 for i in range(t.dim() - 1)) and t.stride(-1) == 1


def _efficient_mask(mask: Any, q: Any, k: Any) -> Any:
    """torch's ``preprocess_mask`` for the memory-efficient kernel: a bias not 8-aligned is padded along the
    last dim and sliced back (aligned storage, same values), then expanded to (B, H, Lq, Lk)."""
    if not _aligned(mask, 8):
        n = int(mask.shape[-1])
        mask = _pad_last(mask, 8, always=True)[..., :n]
    return mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def cuda_kernel_call(choice: int, q: Any, k: Any, v: Any, mask: Any | None,
                     scale: float | None) -> KernelCall | str:
    """The call ``aten::scaled_dot_product_attention`` makes for backend ``choice`` (torch's
    ``attention.cpp``), with the log-sum-exp on; or why there is none. Builds arguments only (no kernel
    runs), so it works on CPU tensors too.

    * flash (1): q, k, v zero-padded to a head dim multiple of 8, ``scale`` = the given one or
      1 / sqrt(original head dim) (``calculate_scale`` on the unpadded query), no mask (torch never picks
      flash with one); returns (out, lse (B, H, L), ...).
    * efficient (2): a boolean mask becomes 0 / -inf in the query dtype (``convert_boolean_attn_mask``),
      then :func:`_efficient_mask`; ``compute_log_sumexp=True`` (torch passes it only under autograd; the
      output does not depend on it, which the first-call check confirms); lse (B, H, L padded to 32).
    * cuDNN (3): no mask or an additive one (torch versions convert a boolean mask differently for cuDNN:
      -65504 or -inf, so that case is left to the real call); ``compute_log_sumexp=True``.
    """
    import torch

    d = int(q.shape[-1])
    if choice == _FLASH:
        if mask is not None:
            return "torch chose the flash kernel with a mask (not expected)"
        og_scale = float(scale) if scale is not None else 1.0 / math.sqrt(d)
        padded = tuple(_pad_last(t, 8) for t in (q, k, v))
        return KernelCall("flash", "_scaled_dot_product_flash_attention", (*padded, 0.0, False, False),
                          {"scale": og_scale}, d, None)
    if choice == _EFFICIENT:
        bias = None
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill_(
                    mask.logical_not(), float("-inf"))
            bias = _efficient_mask(mask, q, k)
        return KernelCall("efficient", "_scaled_dot_product_efficient_attention",
                          (q, k, v, bias, True, 0.0, False), {"scale": scale}, d, mask)
    if choice == _CUDNN:
        if mask is not None and mask.dtype == torch.bool:
            return "a boolean mask under the cuDNN kernel (converted differently across torch versions)"
        return KernelCall("cudnn", "_scaled_dot_product_cudnn_attention",
                          (q, k, v, mask, True, 0.0, False, False), {"scale": scale}, d, mask)
    return f"torch would run SDPA backend {choice} on CUDA (not flash, memory-efficient or cuDNN)"


def lse_rows(lse: Any, q: Any) -> Any | None:
    """A kernel's log-sum-exp as (B, H, L) float32 for queries ``q`` (B, H, L, d): cuDNN's trailing unit dim
    dropped, the memory-efficient kernel's padding along L sliced off; None for any other shape."""
    if lse.dim() == 4 and lse.shape[-1] == 1:
        lse = lse.squeeze(-1)
    B, H, L = (int(x) for x in q.shape[:3])
    if lse.dim() != 3 or int(lse.shape[0]) != B or int(lse.shape[1]) != H or int(lse.shape[2]) < L:
        return None
    return (lse if int(lse.shape[2]) == L else lse[..., :L]).float()
