"""Deferred scoring of a layer's later calls (difflens.attention.deferred), the aggregator's bulk add, the
argument binding and the rebuilt dispatch the capture relies on.

Tolerance: the deferred and the immediate paths compute the same probabilities with the same float32
formulas, only batched differently (stacked records in one matmul, exp2 for exp), so maps agree to a few
1e-7; 1e-6 is the issue's bound for maps and float32 noise of this size cannot break it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from difflens.attention.aggregate import MEASURE_BATCH, OnlineAggregator
from difflens.attention.api import AttentionConfig, plan_attention
from difflens.attention.capture import AttentionCapture
from difflens.attention.lse import SdpaTap, TapRecord, lse_route_available
from difflens.attention.text_probs import Ranges, lse_columns
from difflens.attention.wrapper import bind_arguments
from difflens.errors import DifflensError
from difflens.models import load_pipeline

pytestmark = pytest.mark.skipif(not lse_route_available(), reason="torch lacks the CPU flash kernel op")


def _run(plan: Any, defer: bool) -> tuple[Any, AttentionCapture, Any]:
    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, 3, [la.name for la in plan.layers], plan.joint,
                           plan.groups)
    cap = AttentionCapture(plan.pipe, plan.denoiser, plan.layers, [t.key for t in plan.tokens],
                           plan.prompt_tokens.text_len, plan.latent_hw, agg, defer=defer)
    with cap, torch.no_grad():
        image = plan.pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(1)).images[0]
    return agg.result(), cap, np.asarray(image)


@pytest.mark.parametrize("family", ["flux", "pixart", "sd15"])
def test_deferred_capture_equals_immediate_scoring(family: str,
                                                   tiny_pipeline_dir: Callable[[str], Path]) -> None:
    """Joint (Flux), masked cross (PixArt) and multi-grid cross (SD 1.x) attention over 11 steps (more than
    one aggregator batch): deferring the later calls changes neither the image nor the maps, and it did
    happen (calls were held, within the byte bound)."""
    from difflens.attention.deferred import DEFER_BYTES

    path = tiny_pipeline_dir(family)
    pipe = load_pipeline(path, "float32", "cpu", offline=True)
    cfg = AttentionConfig(model=str(path), prompt="a photo of a cat and a dog", steps=MEASURE_BATCH + 3,
                          seed=1, height=32, width=32, max_sequence_length=32 if family != "sd15" else None,
                          image_check=False, stride=3)
    plan = plan_attention(cfg, pipe)
    now, cap_now, img_now = _run(plan, defer=False)
    later, cap_later, img_later = _run(plan, defer=True)
    assert cap_now._deferred.peak_bytes == 0
    assert 0 < cap_later._deferred.peak_bytes <= DEFER_BYTES
    assert np.array_equal(img_now, img_later)
    assert later.steps_seen == now.steps_seen and len(now.steps_seen) > MEASURE_BATCH
    pairs = [(now.maps, later.maps), (now.per_step, later.per_step), (now.token_entropy, later.token_entropy),
             (now.word_peak, later.word_peak)]
    if plan.joint:
        pairs += [(now.text_mass, later.text_mass), (now.maps_text_renorm, later.maps_text_renorm)]
    for a, b in pairs:
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert float(np.abs(later.maps).max()) > 1e-3
    assert [i.calls for i in cap_later.info] == [i.calls for i in cap_now.info]
    assert {i.route for i in cap_later.info} == {"lse"}
    # a capture whose chunk of transient bytes is small (a tight --max-memory-mb) defers within it
    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, 3, [la.name for la in plan.layers], plan.joint,
                           plan.groups)
    small = AttentionCapture(plan.pipe, plan.denoiser, plan.layers, [t.key for t in plan.tokens],
                             plan.prompt_tokens.text_len, plan.latent_hw, agg, chunk_bytes=1 << 18)
    with small, torch.no_grad():
        plan.pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(1))
    assert small._deferred.peak_bytes <= 1 << 18
    np.testing.assert_allclose(agg.result().maps, now.maps, rtol=0, atol=1e-6)


def test_add_calls_equals_add_planes() -> None:
    """The bulk add (several layers and steps, two grids, one index_add_ each) equals one add_planes per call,
    across batch closes; steps that do not fit the open batch, or go back, are refused."""
    gen = torch.Generator().manual_seed(0)
    steps, layers = 11, 3
    grids = [(4, 4), (8, 8), (4, 4)]
    planes = {(s, la): torch.rand(5, *grids[la], generator=gen) for s in range(steps) for la in range(layers)}

    def fresh() -> OnlineAggregator:
        return OnlineAggregator(5, (8, 8), 2, ["a", "b", "c"], False, [[0], [1, 2], [3, 4]])

    one = fresh()
    for (s, la), p in planes.items():
        one.add_planes(s, la, p)
    bulk = fresh()
    s = 0
    while s < steps:
        n = min(bulk.steps_room(s), steps - s)
        parts = []
        for grid in sorted(set(grids)):
            rows = [(t, la) for t in range(s, s + n) for la in range(layers) if grids[la] == grid]
            parts.append(([t for t, _ in rows], torch.stack([planes[r] for r in rows])))
        bulk.add_calls(parts)
        s += n
    a, b = one.result(), bulk.result()
    assert a.steps_seen == b.steps_seen == list(range(steps))
    for x, y in [(a.maps, b.maps), (a.per_step, b.per_step), (a.token_entropy, b.token_entropy),
                 (a.word_entropy, b.word_entropy), (a.word_peak, b.word_peak)]:
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)
    agg = fresh()
    agg.add_planes(3, 0, planes[(3, 0)])
    with pytest.raises(ValueError, match="do not fit"):
        agg.add_calls([([2], planes[(2, 0)][None])])                    # before the open step
    with pytest.raises(ValueError, match="do not fit"):
        agg.add_calls([(list(range(4, 4 + MEASURE_BATCH)), torch.rand(MEASURE_BATCH, 5, 4, 4))])


def test_lse_columns_of_stacked_records_equal_each_record() -> None:
    """Records of the same shapes scored as one batch give each record's planes: joint attention with a run
    of identical trailing keys, and masked cross attention scoring kept keys only."""
    gen = torch.Generator().manual_seed(1)
    scale = 8 ** -0.5
    keys = torch.tensor([0, 2, 5])

    def flash(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, 0.0, False, attn_mask=mask,
                                                                         scale=scale)[1]

    joint, cross = [], []
    for _ in range(4):
        q = torch.randn(2, 2, 30, 8, generator=gen)
        k = torch.randn(2, 2, 30, 8, generator=gen)
        k[:, :, 20:] = k[:, :, 19:20]                                  # text keys 3..9 are one key
        joint.append(TapRecord(q, k, flash(q, k, None), None, scale))
        qc, kc = torch.randn(2, 2, 16, 8, generator=gen), torch.randn(2, 2, 12, 8, generator=gen)
        mask = torch.zeros(2, 1, 1, 12)
        mask[..., 9:] = -1e4
        cross.append(TapRecord(qc, kc, flash(qc, kc, mask), mask, scale))
    cases = [(joint, Ranges(slice(0, 16), slice(16, 30), 30, 30, True), {}),
             (cross, Ranges(slice(0, 16), slice(0, 12), 16, 12, False), {"lse_agrees": True})]
    for recs, rng, memo0 in cases:
        each = [lse_columns(r, rng, slice(1, 2), keys, head_entropy=False, chunk_bytes=1 << 20, drift=False,
                            memo=dict(memo0))["planes"] for r in recs]
        stacked = lse_columns(recs, rng, slice(1, 2), keys, head_entropy=False, chunk_bytes=1 << 20,
                              drift=False, memo=dict(memo0))["planes"]
        assert stacked.shape == (len(recs), *each[0].shape)
        torch.testing.assert_close(stacked, torch.stack(each), rtol=0, atol=1e-6)
        assert float(stacked.abs().max()) > 1e-2


class _Aggregator:
    def __init__(self) -> None:
        self.added: list[Any] = []

    def steps_room(self, first_step: int) -> int:
        return MEASURE_BATCH

    def add_calls(self, parts: list[Any]) -> None:
        self.added.extend(parts)


def test_deferred_calls_refuse_changed_or_untracked_inputs() -> None:
    """A kept q changed in place after its call is an error at the flush (never a silent wrong map), and
    nothing half-added reaches the aggregator; inference-mode tensors (no version counter) are not
    deferred."""
    from difflens.attention.deferred import DeferredCalls

    q = torch.randn(1, 2, 24, 8)
    k = torch.randn(1, 2, 24, 8)
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, 0.0, False)
    rng = Ranges(slice(8, 24), slice(0, 8), 24, 24, True)
    agg = _Aggregator()
    calls = DeferredCalls(agg, torch.tensor([1, 3]))
    rec = TapRecord(q, k, lse, None, 8 ** -0.5)
    assert rec.unchanged() is True
    assert calls.offer(0, 0, rec, rng, slice(0, 1), (4, 4))
    calls.flush()
    assert len(agg.added) == 1 and agg.added[0][1].shape == (1, 5, 4, 4)
    assert calls.offer(0, 1, TapRecord(q, k, lse, None, 8 ** -0.5), rng, slice(0, 1), (4, 4))
    q.mul_(2.0)
    with pytest.raises(DifflensError, match="changed in place"):
        calls.flush()
    assert len(agg.added) == 1 and not calls
    with torch.inference_mode():
        qi, ki = torch.randn(1, 2, 24, 8), torch.randn(1, 2, 24, 8)
        _, li = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qi, ki, ki, 0.0, False)
    untracked = TapRecord(qi, ki, li, None, 8 ** -0.5)
    assert untracked.versions is None and untracked.unchanged() is None
    assert not calls.offer(0, 2, untracked, rng, slice(0, 1), (4, 4))


def test_bind_names_arguments_as_signature_bind() -> None:
    """The capture's argument binding gives Signature.bind's arguments (extra keywords flattened in) for the
    processor signatures diffusers uses: plain, with *args, with **kwargs, and keyword-only."""
    def plain(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None): ...
    def variadic(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs): ...
    def keyword_only(attn, hidden_states, *, encoder_hidden_states=None, image_rotary_emb=None): ...

    def reference(sig: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        named = dict(sig.bind(*args, **kwargs).arguments)
        for name, param in sig.parameters.items():
            if param.kind == inspect.Parameter.VAR_KEYWORD:
                named.update(named.pop(name, {}))
        named.pop("args", None)
        return named

    cases = [(plain, ("A", "h"), {"attention_mask": "m"}), (plain, ("A", "h", "e", "m"), {}),
             (variadic, ("A", "h"), {"encoder_hidden_states": "e", "scale": 2.0}),
             (keyword_only, ("A", "h"), {"image_rotary_emb": "r"})]
    for fn, args, kwargs in cases:
        sig = inspect.signature(fn)
        assert bind_arguments(sig, args, kwargs) == reference(sig, args, kwargs)
    sig = inspect.signature(variadic)                # more positionals than named parameters: bind's route
    assert bind_arguments(sig, ("A", "h", "e", "m", "x"), {})["attention_mask"] == "m"


def test_rebuilt_dispatch_reaches_the_tap_without_a_torch_function_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Flux's processor calls diffusers' dispatch_attention_fn: its rebuilt copy hands out the native backend
    rebuilt so that its SDPA call reaches the tap (no TorchFunctionMode: the mode is made unusable here), with
    the output of the original dispatch bit for bit; without an active tap it is the original call."""
    pytest.importorskip("diffusers.models.attention_dispatch")
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    import difflens.attention.lse as lse_mod
    from difflens.attention.rebuild import _tapped_dispatch

    def no_mode() -> type:
        raise AssertionError("the TorchFunctionMode was used")

    monkeypatch.setattr(lse_mod, "_mode_class", no_mode)
    tapped = _tapped_dispatch(dispatch_attention_fn)
    assert tapped is not dispatch_attention_fn and tapped.__code__ is dispatch_attention_fn.__code__
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 24, 2, 8, generator=gen) for _ in range(3))     # (B, L, H, d), as diffusers
    with torch.no_grad():
        ref = dispatch_attention_fn(q, k, v)
        assert torch.equal(tapped(q, k, v), ref)
        tap = SdpaTap(verify=True)
        lse_mod._ACTIVE.tap = tap
        try:
            out = tapped(q, k, v)
        finally:
            lse_mod._ACTIVE.tap = None
    assert torch.equal(out, ref)
    assert tap.calls == 1 and tap.record is not None and tap.record.output_equal is True
