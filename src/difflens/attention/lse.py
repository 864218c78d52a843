"""Image->text attention probabilities from the fused kernel's log-sum-exp: no second attention pass.

The fused CPU kernel behind ``F.scaled_dot_product_attention`` (flash attention for CPU) computes, for each
query i, ``lse_i = log sum_j exp(scale * q_i . k_j + m_ij)`` over ALL keys j, and
``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns it beside the output. With it,

    p(j | i) = exp(scale * q_i . k_j + m_ij - lse_i)                      (Vaswani et al. 2017, eq. 1)

for the text keys j only: an N_image x N_text product per head instead of an N_image x N_all pass
(:mod:`difflens.attention.text_probs`).

:class:`SdpaTap` runs the ORIGINAL processor's call on a captured layer with its SDPA call routed to the tap
(:func:`difflens.attention.rebuild.tapped_function`: the processor's ``__call__`` over a private copy of its
globals; else a ``TorchFunctionMode`` around the call; thread-local, scoped, nothing shared is patched). When
that processor calls ``F.scaled_dot_product_attention`` on inputs for which torch itself would run the CPU
flash kernel (``torch._fused_sdp_choice`` says so), the tap calls that same kernel directly, with the same
arguments and the boolean mask converted to the additive mask torch would build, and returns its output: the
layer computes exactly what it computes without the tap (checked bit for bit against
``F.scaled_dot_product_attention`` on each layer's first captured call, where the real call's output is
returned; the verdict is kept per argument layout and process, so a sweep pays the check once). The tap keeps
q, k (the kernel's inputs, after projections, norms and RoPE), the mask, the scale and the log-sum-exp.

On CUDA the tap does what ``aten::scaled_dot_product_attention`` (torch ``attention.cpp``) does for the
backend ``torch._fused_sdp_choice`` names, with the log-sum-exp switched on
(:func:`difflens.attention.kernels.cuda_kernel_call`; verified on an H200 with torch 2.11): flash
(head dim zero-padded to a multiple of 8, scale from the original head dim, output sliced back), memory-
efficient (boolean mask made additive, bias padded to an aligned stride and expanded; its lse is padded
along L and is sliced) or cuDNN (additive or no mask only). The same first-call ``torch.equal`` check
guards the output, and a kernel error, an lse of unexpected shape or a boolean mask under cuDNN leaves the
real call in place. Anything else (dropout, causal, GQA, the math backend, a second SDPA call in the
processor, unexpected sequence lengths) leaves the tap unused and the caller falls back to
:mod:`difflens.attention.replay`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from difflens.attention.kernels import cuda_kernel_call, lse_rows

_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                                  "enable_gqa": False}
_FLASH = 1   # int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)


def lse_route_available() -> bool:
    """Whether the installed torch exposes the fused kernels with their log-sum-exp (the CPU flash op and the
    backend choice; the CUDA ops are looked up per call, and a missing one falls back to the replay)."""
    import torch

    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu") and hasattr(
        torch, "_fused_sdp_choice")


_CPU_FLASH: list[Any] = []


def _cpu_flash() -> Any:
    """The CPU flash kernel's op overload, resolved once (the packet resolves its overload on every call)."""
    if not _CPU_FLASH:
        import torch

        _CPU_FLASH.append(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default)
    return _CPU_FLASH[0]


@dataclass
class TapRecord:
    """What one processor call handed to the attention kernel (layout (B, H, L, d); lse (B, H, L))."""

    query: Any
    key: Any
    lse: Any
    mask: Any | None        # additive float mask broadcastable to (B, H, Lq, Lk), or None
    scale: float
    output_equal: bool | None = None   # kernel output == F.scaled_dot_product_attention (verify calls)
    backend: str = "cpu-flash"         # cpu-flash, or on CUDA: flash, efficient, cudnn
    #: the in-place version counters of q, k and the mask at the call; None for inference-mode tensors
    #: (they keep no counter)
    versions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.versions is None:
            self.versions = self._current_versions()

    def _current_versions(self) -> tuple[int, ...] | None:
        try:
            return tuple(t._version for t in (self.query, self.key, self.mask) if t is not None)
        except RuntimeError:
            return None

    def unchanged(self) -> bool | None:
        """Whether q, k and the mask still hold what the kernel saw (no in-place change since the call);
        None when that cannot be told (inference-mode tensors)."""
        if self.versions is None:
            return None
        return self._current_versions() == self.versions


def _sdpa_arguments(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    named = dict(_SDPA_DEFAULTS)
    named.update(zip(_SDPA_PARAMS, args, strict=False))
    named.update(kwargs)
    return named


class SdpaTap:
    """One processor call with the attention kernel tapped; see the module docstring.

    ``verify``: return the real ``F.scaled_dot_product_attention`` output and record whether the kernel's
    own output equals it bit for bit (one extra attention pass; used on a layer's first captured call).
    After :meth:`run`, :attr:`record` is the tapped call, or None when the tap did not apply (then
    :attr:`reason` says why).
    """

    def __init__(self, verify: bool = False) -> None:
        self.verify = verify
        self.record: TapRecord | None = None
        self.calls = 0
        self.reason: str | None = None

    def run(self, processor: Any, args: tuple, kwargs: dict[str, Any],
            function: Any | None = None) -> Any:
        """Call ``processor(*args, **kwargs)`` with its SDPA call tapped. ``function`` (from
        :func:`difflens.attention.rebuild.tapped_function`) is the processor's ``__call__`` rebound to globals
        in which ``F`` and ``dispatch_attention_fn`` lead to the tap: no cost on its other torch calls.
        Without it, the whole call runs under a ``TorchFunctionMode`` (a Python hop on every torch call)."""
        prev = getattr(_ACTIVE, "tap", None)
        _ACTIVE.tap = self
        try:
            if function is not None:
                out = function(processor, *args, **kwargs)
            else:
                with _mode_class()():
                    out = processor(*args, **kwargs)
        finally:
            _ACTIVE.tap = prev
        if self.calls != 1:
            self.record = None
            if self.reason is None:
                self.reason = f"the processor called scaled_dot_product_attention {self.calls} times"
        return out

    def handle(self, func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The one SDPA call of the processor: run the same CPU flash kernel and keep its inputs and lse."""
        import torch

        self.calls += 1
        if self.calls > 1:
            return func(*args, **kwargs)
        a = _sdpa_arguments(args, kwargs)
        q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
        why = _ineligible(q, k, v, a)
        if why is None and q.device.type == "cuda":
            return self._handle_cuda(func, args, kwargs, a)
        if why is None and mask is not None and mask.dtype == torch.bool:
            # what torch's convert_boolean_attn_mask builds before choosing a kernel
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill_(
                mask.logical_not(), float("-inf"))
        if why is None and mask is not None and mask.dtype != q.dtype:
            why = f"mask dtype {mask.dtype} differs from the query dtype {q.dtype}"
        if why is None and torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=a["scale"]) != _FLASH:
            why = "torch would not run the CPU flash kernel on these inputs"
        if why is not None:
            self.reason = why
            return func(*args, **kwargs)
        out, lse = _cpu_flash()(q, k, v, 0.0, False, attn_mask=mask, scale=a["scale"])
        scale = float(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
        self.record = TapRecord(q, k, lse, mask, scale)
        return self._verified(func, args, kwargs, out, ("cpu-flash", q, k, v, a["attn_mask"], a["scale"]))

    def _handle_cuda(self, func: Any, args: tuple, kwargs: dict[str, Any], a: dict[str, Any]) -> Any:
        """The CUDA kernel torch would run, called as torch calls it but with its log-sum-exp kept."""
        import torch

        q, k, v, mask, scale = a["query"], a["key"], a["value"], a["attn_mask"], a["scale"]
        if mask is not None and mask.dtype not in (torch.bool, q.dtype):
            self.reason = f"mask dtype {mask.dtype} differs from the query dtype {q.dtype}"
            return func(*args, **kwargs)
        # the dispatcher's choice is made on the mask as given (before any boolean conversion)
        choice = int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=scale))
        call = cuda_kernel_call(choice, q, k, v, mask, scale)
        if isinstance(call, str):
            self.reason = call
            return func(*args, **kwargs)
        try:
            res = getattr(torch.ops.aten, call.op)(*call.args, **call.kwargs)
        except Exception as exc:  # an argument form this torch does not take: the real call, then replay
            self.reason = f"the {call.backend} kernel call failed ({type(exc).__name__})"
            return func(*args, **kwargs)
        out = res[0] if res[0].shape[-1] == call.head_dim else res[0][..., :call.head_dim]
        lse = lse_rows(res[1], q)
        if lse is None:
            self.reason = (f"the {call.backend} kernel's log-sum-exp has shape {tuple(res[1].shape)}, "
                           f"not (B, H, >= L) for L = {q.shape[2]}")
            return func(*args, **kwargs)
        s = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        self.record = TapRecord(q, k, lse, call.mask, s, backend=call.backend)
        return self._verified(func, args, kwargs, out, (call.backend, q, k, v, mask, scale))


    def _verified(self, func: Any, args: tuple, kwargs: dict[str, Any], out: Any, sig: tuple) -> Any:
        """On a verify call, the real call's output, and whether the kernel's equals it bit for bit. The
        verdict is kept per process for the call's signature (kernel, device, dtypes, shapes, strides,
        pointer alignment, the mask as given, scale, threads): the same aten op on the same argument
        layout takes the same path, so a signature verified once in this process is not run twice again
        (a sweep over prompts pays it once)."""
        import torch

        if not self.verify:
            return out
        key = _signature(sig)
        known = _VERIFIED.get(key)
        if known is not None:
            self.record.output_equal = known     # type: ignore[union-attr]
            return out if known else func(*args, **kwargs)
        real = func(*args, **kwargs)
        equal = bool(torch.equal(real, out))
        self.record.output_equal = equal          # type: ignore[union-attr]
        if len(_VERIFIED) < 4096:
            _VERIFIED[key] = equal
        return real


def _signature(sig: tuple) -> tuple:
    """A hashable description of a kernel call's argument layout (no values). Pointer alignment is kept modulo
    64 bytes on CPU (the widest SIMD load, AVX-512, and the cache line: what a CPU kernel's code path can
    depend on; modulo 256 a fresh allocation lands on 0, 64, 128 or 192 by chance, so nearly every generation
    re-verified, one extra attention pass per layer) and modulo 256 on CUDA."""
    import torch

    backend, *tensors, scale = sig
    parts: list[Any] = [backend, scale, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()]
    for t in tensors:
        parts.append(None if t is None else (str(t.device), str(t.dtype), tuple(t.shape), tuple(t.stride()),
                                             t.data_ptr() % (64 if t.device.type == "cpu" else 256)))
    return tuple(parts)


#: signature -> whether the tapped kernel's output equalled F.scaled_dot_product_attention's (per process)
_VERIFIED: dict[tuple, bool] = {}


_ACTIVE = threading.local()
_MODE_CLASS: list[type] = []


def _active_handle(func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    tap = getattr(_ACTIVE, "tap", None)
    if tap is None:
        return func(*args, **kwargs)
    return tap.handle(func, args, kwargs)


def _mode_class() -> type:
    """A TorchFunctionMode sending F.scaled_dot_product_attention to the active tap (built once)."""
    if not _MODE_CLASS:
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        sdpa = F.scaled_dot_product_attention

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                                   kwargs: dict[str, Any] | None = None) -> Any:
                if func is sdpa:
                    return _active_handle(func, args, kwargs or {})
                return func(*args, **(kwargs or {}))

        _MODE_CLASS.append(_Mode)
    return _MODE_CLASS[0]


def _ineligible(q: Any, k: Any, v: Any, a: dict[str, Any]) -> str | None:
    import torch

    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return "non-tensor inputs"
    if q.device.type not in ("cpu", "cuda"):
        return f"device {q.device.type} (the log-sum-exp route runs on CPU and CUDA)"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "inputs are not (B, H, L, d)"
    if q.is_nested or q.requires_grad or k.requires_grad or v.requires_grad:
        return "nested or autograd inputs"
    if a["dropout_p"] or a["is_causal"] or a["enable_gqa"] or q.shape[1] != k.shape[1]:
        return "dropout, causal or grouped-query attention"
    if not (q.dtype == k.dtype == v.dtype):
        return "mixed input dtypes"
    return None
