"""Capture attention probabilities through diffusers' attention-processor seam (DESIGN.md 2.9).

:class:`AttentionCapture` is a context manager. On entry it replaces the processor of each selected layer
with a delegating processor that

1. calls the ORIGINAL processor and returns its output unchanged (the image keeps coming from SDPA or
   whatever backend was set), and
2. during conditional denoiser calls, obtains the image->text probabilities and feeds them to an
   :class:`OnlineAggregator`: on CPU and CUDA from the attention kernel's own log-sum-exp
   (:mod:`difflens.attention.lse`: the kernel's q, k and lse are tapped during the original call, then p =
   exp(scale q.k_text - lse) over the text keys only, :mod:`difflens.attention.text_probs`), elsewhere by
   replaying the layer's query/key path on the side (:mod:`difflens.attention.replay`, a second pass over all
   keys). On each layer's first captured call the replay runs too, with the full softmax: probabilities sum to
   1, P x V reproduces the layer output, and the log-sum-exp route is compared with it
   (``LayerInfo.lse_error``; above :data:`LSE_GUARD` the layer keeps the replay route). A later capture of the
   same module with the same call layout in the same process (a sweep over prompts) reuses those checks
   (``checks_reused``). On CUDA the tap calls the flash, memory-efficient or cuDNN kernel torch would run
   (:mod:`difflens.attention.kernels`). On CPU, a layer's later calls (and, with reused checks, its first)
   are not scored one by one: their tapped q, k and lse are kept and scored in stacked batches
   (:mod:`difflens.attention.deferred`), within a byte budget and the aggregator's open batch of steps.

The delegating processor is :mod:`difflens.attention.wrapper`.

It also adds a forward pre-hook on the denoiser (step counter, conditional rows, text length) and on the
text encoders (the token ids each actually received). On exit, even on an exception, every original
processor is put back and every hook removed. No class is patched.

Steps: the denoiser is called once per step (no guidance, or classifier-free guidance batched as
``[uncond, cond]``: the last ``images`` rows are the conditional branch), or ``calls_per_step`` times
with the conditional call at index ``cond_call`` (unbatched true CFG).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

from difflens.attention.aggregate import OnlineAggregator
from difflens.attention.deferred import DeferredCalls
from difflens.attention.layout import AttnLayer, grid_for, module_of
from difflens.attention.lse import SdpaTap, lse_route_available
from difflens.attention.replay import DEFAULT_CHUNK_BYTES, replay
from difflens.attention.text_probs import lse_columns, ranges_for
from difflens.attention.wrapper import call_signature, wrapper_class
from difflens.errors import DifflensError

#: "auto": the kernel's log-sum-exp where a fused kernel runs (CPU flash; CUDA flash, memory-efficient,
#: cuDNN), else the replay; "replay": always the
#: replay (second attention pass over all keys), the route of difflens <= 0.1.
Route = Literal["auto", "replay"]
#: Largest |lse route - replay route| (probabilities, first call) for which a layer keeps the lse route.
#: Both compute the same probabilities in float32 (measured <= 3e-7 on CPU float32, <= 3.3e-6 on an H200 in
#: float16/bfloat16 with cuDNN, where the kernel's lse carries its float32 exp2 rounding); a kernel whose
#: log-sum-exp is not natural-log over the scaled scores would differ by O(0.1).
LSE_GUARD = 1e-4


#: attention module (weakly held) -> {call layout: (sum_error, out_error, route_error, lse_error, lse_drift,
#: lse_agrees)} of a first call whose lse route agreed with the replay: a later capture of the same module and
#: layout (a sweep over prompts) reuses these checks instead of replaying its first call (the replay is the
#: costly part of a capture on small models). Per process, like the kernel verdicts of
#: :mod:`difflens.attention.lse`.
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout(processor: Any, kind: str, call: dict[str, Any], rows: slice, text_len: int | None,
            check: bool) -> tuple:
    """What a layer's first-call checks depend on: processor class, layer kind, the shapes, dtypes and
    devices of its inputs (mask included), the conditional rows, the text length and whether checks run."""
    def desc(t: Any) -> Any:
        return None if t is None or not hasattr(t, "shape") else (tuple(t.shape), str(t.dtype), str(t.device))

    return (type(processor), kind, desc(call.get("hidden_states")), desc(call.get("encoder_hidden_states")),
            desc(call.get("attention_mask")), rows.start, rows.stop, text_len, check)


@dataclass
class LayerInfo:
    """What the capture learned about a layer (grid, checks) while running."""

    name: str
    kind: str
    processor: str
    heads: int
    grid: tuple[int, int] | None = None
    calls: int = 0
    sum_error: float | None = None
    route_error: float | None = None
    out_error: float | None = None
    route: str = "replay"            # "lse" (kernel log-sum-exp) or "replay" (second pass), last call
    lse_error: float | None = None   # max |lse-route columns - replay columns| on the first call
    fallback_reason: str | None = None
    backend: str | None = None       # the kernel the lse route tapped: cpu-flash, flash, efficient, cudnn
    lse_drift: float | None = None   # first call: |sum exp(s - lse) - 1| (cross) / text mass - 1 (joint)
    checks_reused: bool = False      # first-call checks taken from an earlier capture (same module, layout)


@dataclass
class CaptureStats:
    denoiser_calls: int = 0
    captured_calls: int = 0
    steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    peak_transient_bytes: int = 0
    text_len_seen: int | None = None


class AttentionCapture:
    """Context manager capturing image->text attention of ``layers`` into ``aggregator``.

    ``token_keys``: indices (in the text sequence) of the tokens to keep; ``text_len``: the text sequence
    length the denoiser must receive; ``latent_hw``: the latent grid maps are resized to; ``images``: images
    per prompt (conditional rows); ``check``: on each layer's first captured call, check that the
    probabilities sum to 1 and that probabilities x V reproduce the layer's real output;
    ``encoders``: text-encoder attribute names whose first input ids are recorded.
    """

    def __init__(self, pipe: Any, denoiser: Any, layers: list[AttnLayer], token_keys: list[int],
                 text_len: int, latent_hw: tuple[int, int], aggregator: OnlineAggregator, *, images: int = 1,
                 calls_per_step: int = 1, cond_call: int = 0, check: bool = True, head_entropy: bool = False,
                 encoders: tuple[str, ...] = (), chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 route: Route = "auto", defer: bool = True) -> None:
        import torch

        self.pipe = pipe
        self.denoiser = denoiser
        self.layers = layers
        self.text_len = text_len
        self.latent_hw = latent_hw
        self.aggregator = aggregator
        self.images = images
        self.calls_per_step = max(1, calls_per_step)
        self.cond_call = cond_call
        self.check = check
        self.head_entropy = head_entropy
        self.encoders = encoders
        self.chunk_bytes = chunk_bytes
        self.token_keys = torch.as_tensor(token_keys, dtype=torch.long)
        self.info = [LayerInfo(la.name, la.kind, la.processor, la.heads) for la in layers]
        self.stats = CaptureStats()
        self.recorded_ids: dict[str, list[int]] = {}
        self.active = False
        self.step = -1
        self._rows = slice(0, images)
        self._originals: list[tuple[Any, Any]] = []
        self._hooks: list[Any] = []
        self._keys_on: Any = None
        if route not in ("auto", "replay"):
            raise DifflensError(f"unknown attention capture route {route!r}.", "use 'auto' or 'replay'")
        self.route = route
        self._lse_ok = [route == "auto" and lse_route_available()] * len(layers)
        self._drift_pending: list[Any] = [None] * len(layers)
        self._memos: list[dict[str, Any]] = [{} for _ in layers]    # per layer, for lse_columns
        # later calls of a layer whose first call kept the lse route, scored in batches (deferred.py): on CPU,
        # without the per-layer breakdown or head entropy
        self.defer = defer and not head_entropy and not aggregator.breakdown
        self._deferrable = [False] * len(layers)
        self._steady: list[tuple | None] = [None] * len(layers)   # per layer: shapes, rows, deferred group
        self._deferred = DeferredCalls(aggregator, None, budget=chunk_bytes)

    # -- context ----------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        try:
            for i, layer in enumerate(self.layers):
                module = module_of(self.denoiser, layer.name)
                original = module.processor
                wrapper = wrapper_class(type(original), call_signature(original))(original, self, i, layer)
                self._originals.append((module, original))
                module.set_processor(wrapper)
            self._hooks.append(self.denoiser.register_forward_pre_hook(self._denoiser_pre_hook,
                                                                       with_kwargs=True))
            for attr in self.encoders:
                enc = getattr(self.pipe, attr, None)
                if enc is not None:
                    hook = enc.register_forward_pre_hook(self._encoder_hook(attr), with_kwargs=True)
                    self._hooks.append(hook)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._restore()
        self.active = False
        if exc_type is None:
            self._deferred.flush()
            self.stats.peak_transient_bytes = max(self.stats.peak_transient_bytes, self._deferred.peak_bytes)
        self._deferred.discard()
        for index, pending in enumerate(self._drift_pending):
            if pending is not None:
                info = self.info[index]
                info.lse_drift = max(info.lse_drift or 0.0, float(pending))
                self._drift_pending[index] = None
        if exc_type is None:
            self.aggregator.end_step()

    def _restore(self) -> None:
        while self._originals:
            module, original = self._originals.pop()
            module.set_processor(original)
        while self._hooks:
            self._hooks.pop().remove()

    # -- hooks ------------------------------------------------------------------------------------
    def _encoder_hook(self, attr: str) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if attr in self.recorded_ids:
                return
            ids = args[0] if args else kwargs.get("input_ids")
            if ids is not None:
                self.recorded_ids[attr] = [int(x) for x in ids[0].tolist()]
        return hook

    def _denoiser_pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        hs = kwargs.get("hidden_states", kwargs.get("sample"))
        if hs is None and args:
            hs = args[0]
        call = self.stats.denoiser_calls
        self.stats.denoiser_calls += 1
        self.step = call // self.calls_per_step
        self.stats.steps = self.step + 1
        self.active = (call % self.calls_per_step) == self.cond_call
        batch = int(hs.shape[0])
        if len(self.stats.batch_sizes) < 4:
            self.stats.batch_sizes.append(batch)
        if batch == 2 * self.images:
            self._rows = slice(self.images, 2 * self.images)   # [uncond, cond]
        elif batch == self.images:
            self._rows = slice(0, self.images)
        else:
            raise DifflensError(f"the denoiser got a batch of {batch} for {self.images} image(s); cannot "
                                "tell the conditional branch.", "generate one image per prompt")
        enc = kwargs.get("encoder_hidden_states")
        if enc is not None:
            self.stats.text_len_seen = int(enc.shape[1])
            if self.active and int(enc.shape[1]) != self.text_len:
                raise DifflensError(
                    f"the denoiser received {enc.shape[1]} text positions, the tokenization expected "
                    f"{self.text_len}.", "check --max-sequence-length against the pipeline's encoding")

    # -- per layer --------------------------------------------------------------------------------
    def _tap_for(self, index: int) -> SdpaTap | None:
        """A kernel tap for this layer's call, verifying the output on the layer's first call."""
        if not self._lse_ok[index]:
            return None
        return SdpaTap(verify=self.info[index].calls == 0)

    def _on_layer(self, index: int, layer: AttnLayer, attn: Any, call: dict[str, Any], output: Any,
                  tap: SdpaTap | None = None) -> None:
        info = self.info[index]
        rec = tap.record if tap is not None else None
        deferrable = rec is not None and (self._deferrable[index] or (
            info.calls == 0 and self.defer and self._reuse_checks(index, layer, attn, call, rec)))
        if deferrable and self._defer_call(index, layer, call, rec):
            return
        if self._deferred:                  # the aggregator takes steps in order: the pending calls first
            self._deferred.flush()
        self._keys_for(call["hidden_states"].device)
        first = info.calls == 0
        fast = self._lse_fast(index, layer, call, tap)
        original = self._originals[index][1] if index < len(self._originals) else None
        layout = earlier = None
        if first and fast is not None:
            layout = _layout(original, layer.kind, call, self._rows, self.stats.text_len_seen, self.check)
            earlier = _CHECKED.get(attn, {}).get(layout)
        res = None
        if fast is None or (first and earlier is None):
            # The replay route: the only route where the lse tap does not apply, and on each layer's first
            # call (once per module and layout in the process) the reference the lse route is compared
            # with (full softmax: sum to 1, P x V = output).
            proc_name = type(original).__name__ if original is not None else layer.processor
            res = replay(layer.kind, proc_name, attn, call, output, self._rows, self._keys_on,
                         text_len=self.stats.text_len_seen, check=self.check and first,
                         head_entropy=self.head_entropy, chunk_bytes=self.chunk_bytes)
        if fast is not None and res is not None:
            info.lse_error = float((fast["planes"] - res.columns.transpose(0, 1)).abs().max())
            if not info.lse_error <= LSE_GUARD:      # NaN too
                self._lse_ok[index] = False
                info.fallback_reason = (f"the log-sum-exp route differed from the replay by "
                                        f"{info.lse_error:.2g} (> {LSE_GUARD:g}) on the first call")
                fast = None
        if earlier is not None:
            info.sum_error, info.out_error, info.route_error, info.lse_error = earlier[:4]
            info.checks_reused = True
        if fast is not None:
            info.route = "lse"
            flat, n_queries, ent = fast["planes"], fast["n_queries"], fast["head_entropy"]
            transient = fast["transient_bytes"]
            sum_error = res.sum_error if res is not None else None     # the full softmax's, first call
            drift = fast["lse_drift"]               # None after a layer's first call: not measured
            if isinstance(drift, float):
                info.lse_drift = max(info.lse_drift or 0.0, drift)
            elif drift is not None:             # a device tensor: folded in on exit (no sync per call)
                import torch

                prev = self._drift_pending[index]
                self._drift_pending[index] = drift if prev is None else torch.maximum(prev, drift)
        else:
            info.route = "replay"
            flat, n_queries, ent = res.columns.transpose(0, 1), res.n_queries, res.head_entropy
            sum_error, transient = res.sum_error, res.transient_bytes
        h, w = grid_for(n_queries, self.latent_hw)
        info.grid = (h, w)
        info.calls += 1
        if sum_error is not None:
            info.sum_error = max(info.sum_error or 0.0, sum_error)
        if first and res is not None:
            info.out_error = res.out_error
            info.route_error = res.route_error
            if info.lse_error is not None and fast is not None:    # the lse route's own error, when used
                info.route_error = max(info.route_error or 0.0, info.lse_error)
            if fast is not None and layout is not None:    # the lse route kept: later captures reuse these
                drift = fast["lse_drift"] if isinstance(fast["lse_drift"], float) else None
                _CHECKED.setdefault(attn, {})[layout] = (info.sum_error, info.out_error, info.route_error,
                                                         info.lse_error, drift,
                                                         self._memos[index].get("lse_agrees", False))
        self.stats.captured_calls += 1
        self.stats.peak_transient_bytes = max(self.stats.peak_transient_bytes, transient)
        planes = flat.reshape(flat.shape[0], h, w)   # flat: (T, Nq) or, joint, (2T + 1, Nq)
        self.aggregator.add_planes(self.step, index, planes, ent)
        if first and fast is not None and self.defer:      # cross: once the kernel's lse agreed (text_probs)
            self._deferrable[index] = layer.kind != "cross" or self._memos[index].get("lse_agrees", False)

    def _keys_for(self, device: Any) -> None:
        """The kept tokens' key indices on ``device`` (replay, lse route and deferred batch)."""
        if self._keys_on is None or self._keys_on.device != device:
            self._keys_on = self.token_keys.to(device)
            self._deferred.token_keys = self._keys_on

    def _reuse_checks(self, index: int, layer: AttnLayer, attn: Any, call: dict[str, Any], rec: Any) -> bool:
        """On a layer's first call: when an earlier capture checked this module and call layout and kept the
        lse route (``_CHECKED``, with the lse drift and agreement it measured), take its checks and let this
        call be deferred like the later ones (no replay, no first-call scoring)."""
        if rec.output_equal is False or index >= len(self._originals):
            return False
        layout = _layout(self._originals[index][1], layer.kind, call, self._rows, self.stats.text_len_seen,
                         self.check)
        earlier = _CHECKED.get(attn, {}).get(layout)
        rng = ranges_for(layer.kind, call, self.stats.text_len_seen)
        if earlier is None or rng is None or not (rng.joint or earlier[5]):
            return False
        self._keys_for(call["hidden_states"].device)
        info = self.info[index]
        info.sum_error, info.out_error, info.route_error, info.lse_error, info.lse_drift = earlier[:5]
        info.checks_reused, info.route, info.backend = True, "lse", rec.backend
        info.grid = grid_for(rng.n_queries, self.latent_hw)
        self._memos[index]["lse_agrees"] = earlier[5]
        self._deferrable[index] = True
        return True

    def _defer_call(self, index: int, layer: AttnLayer, call: dict[str, Any], rec: Any) -> bool:
        """Hand a later call of a layer on the lse route to the deferred batch (False: score it now)."""
        rng = ranges_for(layer.kind, call, self.stats.text_len_seen)
        if rng is None or rec.output_equal is False or rec.unchanged() is not True:
            return False
        known = self._deferred.offer(index, self.step, rec, rng, self._rows, self.info[index].grid)
        if known is None:
            return False
        self._steady[index] = (rec.query.shape, rec.key.shape, rec.mask is None or rec.mask.shape, self._rows,
                               known)
        self.info[index].calls += 1
        self.stats.captured_calls += 1
        return True

    def _keep(self, index: int, rec: Any, known: tuple[tuple, int]) -> None:
        """A steady-state call (see ``_CapturingProcessor._observe``) joins the deferred batch."""
        self._deferred.keep(index, self.step, rec, *known)
        self.info[index].calls += 1
        self.stats.captured_calls += 1

    def _lse_fast(self, index: int, layer: AttnLayer, call: dict[str, Any],
                  tap: SdpaTap | None) -> dict[str, Any] | None:
        """Columns from the kernel's log-sum-exp, or None (and the layer falls back to the replay for the
        rest of the run when the tap cannot apply to it)."""
        if tap is None:
            return None
        rec = tap.record
        reason = tap.reason
        fast = None
        if rec is not None and rec.output_equal is False:
            reason = (f"the {rec.backend} kernel's output differed from scaled_dot_product_attention "
                      "(first-call check)")
        elif rec is not None and rec.unchanged() is False:
            reason = "the processor changed the kernel's q, k or mask in place after the attention call"
        elif rec is not None:
            rng = ranges_for(layer.kind, call, self.stats.text_len_seen)
            if rng is None:
                reason = "the layer's sequence layout could not be read from its call"
            else:
                self.info[index].backend = rec.backend
                fast = lse_columns(rec, rng, self._rows, self._keys_on, head_entropy=self.head_entropy,
                                   chunk_bytes=self.chunk_bytes, drift=self.info[index].calls == 0,
                                   memo=self._memos[index])
                if fast is None:
                    reason = "the kernel's sequence lengths differ from the layer's layout"
        if fast is None:
            self._lse_ok[index] = False
            self.info[index].fallback_reason = reason
        return fast
