"""The log-sum-exp capture route (difflens.attention.lse): maps equal to the replay route's, the layer output
untouched, and the fallbacks.

Tolerance: both routes compute the same probabilities in float32 by different arithmetic (the replay: a
softmax over all keys; the lse route: exp(scale q.k - lse) with lse from the fused kernel, which agrees with
torch.logsumexp to about 5e-7), so maps (probabilities in [0, 1], averaged) agree to a few 1e-7; 1e-6 is
the issue's bound and float32 noise of this size cannot break it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflens.attention.aggregate import OnlineAggregator
from difflens.attention.api import AttentionConfig, plan_attention
from difflens.attention.capture import AttentionCapture
from difflens.attention.lse import SdpaTap, lse_route_available
from difflens.models import load_pipeline

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "pixart")
T5 = ("sd3", "flux", "pixart")

pytestmark = pytest.mark.skipif(not lse_route_available(), reason="torch lacks the CPU flash kernel op")


def _capture(plan: Any, route: str) -> tuple[Any, AttentionCapture, Any]:
    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, 1, [la.name for la in plan.layers], plan.joint,
                           plan.groups)
    cap = AttentionCapture(plan.pipe, plan.denoiser, plan.layers, [t.key for t in plan.tokens],
                           plan.prompt_tokens.text_len, plan.latent_hw, agg, route=route)  # type: ignore[arg-type]
    with cap, torch.no_grad():
        image = plan.pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(1)).images[0]
    return agg.result(), cap, np.asarray(image)


@pytest.mark.parametrize("family", FAMILIES)
def test_lse_route_equals_replay_route(family: str, tiny_pipeline_dir: Callable[[str], Path]) -> None:
    path = tiny_pipeline_dir(family)
    pipe = load_pipeline(path, "float32", "cpu", offline=True)
    cfg = AttentionConfig(model=str(path), prompt="a photo of a cat and a dog", steps=3, seed=1, height=32,
                          width=32, max_sequence_length=32 if family in T5 else None, image_check=False,
                          all_tokens=True)
    plan = plan_attention(cfg, pipe)
    slow, cap_slow, img_slow = _capture(plan, "replay")
    fast, cap_fast, img_fast = _capture(plan, "auto")
    assert {i.route for i in cap_slow.info} == {"replay"}
    assert {i.route for i in cap_fast.info} == {"lse"}, [i.fallback_reason for i in cap_fast.info]
    # the layer output is what the model computes: the same image bit for bit
    assert np.array_equal(img_slow, img_fast)
    pairs = [(slow.maps, fast.maps), (slow.per_step, fast.per_step), (slow.token_entropy, fast.token_entropy)]
    if plan.joint:
        pairs += [(slow.text_mass, fast.text_mass), (slow.maps_text_renorm, fast.maps_text_renorm),
                  (slow.text_mass_per_step, fast.text_mass_per_step)]
    for a, b in pairs:
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert float(np.abs(fast.maps).max()) > 1e-3            # not vacuous: real probabilities were compared
    for info in cap_fast.info:
        assert info.calls == cap_slow.info[0].calls
        assert info.lse_error is not None and info.lse_error <= 1e-6
        assert info.sum_error is not None and info.sum_error <= 1e-5
        assert info.out_error is not None and info.out_error <= 1e-4
        # the CPU flash kernel's lse agrees with these float32 scores to float32 rounding
        assert info.lse_drift is not None and info.lse_drift <= 1e-5


def test_replay_is_used_when_the_kernel_would_not_run() -> None:
    """A processor that calls SDPA twice, or with dropout, leaves the tap unused (the caller falls back)."""
    q = torch.randn(1, 2, 8, 4)

    def twice(x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x) + F.scaled_dot_product_attention(x, x, x)

    tap = SdpaTap()
    out = tap.run(twice, (q,), {})
    assert tap.record is None and "2 times" in (tap.reason or "")
    assert torch.equal(out, twice(q))
    tap = SdpaTap()
    with torch.no_grad():
        tap.run(lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True), (q,), {})
    assert tap.record is None and "causal" in (tap.reason or "")


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_tap_output_and_lse(mask_kind: str) -> None:
    """The tapped kernel's output equals F.scaled_dot_product_attention bit for bit (the same CPU flash
    kernel on the same inputs) and its lse is log-sum-exp of the masked scores (float32, to 5e-6 absolute
    for scores of order 1)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 1, 17, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "additive":
        mask = torch.randn(2, 1, 17, 17, generator=g)
    with torch.no_grad():
        tap = SdpaTap(verify=True)
        out = tap.run(lambda *a: F.scaled_dot_product_attention(*a, attn_mask=mask), (q, k, v), {})
    assert tap.record is not None, tap.reason
    assert tap.record.output_equal is True
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    s = q @ k.transpose(-1, -2) / 8 ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    torch.testing.assert_close(tap.record.lse, torch.logsumexp(s, -1), rtol=0, atol=5e-6)


# -- the CUDA kernels' arguments (difflens.attention.kernels), built and checked on CPU tensors ------------
def test_flash_call_pads_the_head_dim_and_keeps_the_original_scale() -> None:
    """Flash: q, k, v zero-padded to a head dim multiple of 8, scale 1/sqrt(original d); the padded call's
    output, sliced back, is the unpadded attention (zero columns add nothing to q.k; checked with the CPU
    math kernel, same float32 arithmetic up to summation order, hence the tolerance)."""
    from difflens.attention.kernels import cuda_kernel_call

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 12, generator=g) for _ in range(3))
    call = cuda_kernel_call(1, q, k, v, None, None)
    assert not isinstance(call, str)
    assert call.op == "_scaled_dot_product_flash_attention" and call.backend == "flash"
    qp, kp, vp = call.args[:3]
    assert qp.shape == (1, 2, 9, 16) and torch.equal(qp[..., :12], q) and not qp[..., 12:].any()
    assert call.args[3:] == (0.0, False, False) and call.kwargs == {"scale": 1.0 / 12 ** 0.5}
    assert call.head_dim == 12 and call.mask is None
    out = F.scaled_dot_product_attention(qp, kp, vp, scale=call.kwargs["scale"])[..., :12]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-6)
    q8 = torch.randn(1, 2, 9, 16, generator=g)
    assert cuda_kernel_call(1, q8, q8, q8, None, 0.5).args[0] is q8          # aligned: no copy, scale kept
    assert isinstance(cuda_kernel_call(1, q, k, v, torch.zeros(9, 9), None), str)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "aligned"])
def test_efficient_call_prepares_the_mask_as_torch_does(mask_kind: str) -> None:
    """Memory-efficient: a boolean mask becomes 0 / -inf in the query dtype, a bias whose strides are not
    8-aligned is copied into 8-aligned storage (same values), and the bias is expanded to (B, H, Lq, Lk);
    log-sum-exp on. The prepared bias gives the same attention as the original mask (CPU math kernel)."""
    from difflens.attention.kernels import cuda_kernel_call

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    k, v = k[:, :, :4].repeat(1, 1, 5, 1)[:, :, :17], v[:, :, :4].repeat(1, 1, 5, 1)[:, :, :17]
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 1, 17, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "additive":
        mask = torch.randn(2, 1, 5, 17, generator=g)
    else:
        mask = torch.randn(2, 1, 5, 24, generator=g)[..., :16]
        k, v = k[:, :, :16], v[:, :, :16]
    call = cuda_kernel_call(2, q, k, v, mask, None)
    assert not isinstance(call, str)
    assert call.op == "_scaled_dot_product_efficient_attention"
    bias = call.args[3]
    assert call.args[4] is True and call.args[5:] == (0.0, False) and call.kwargs == {"scale": None}
    assert bias.shape == (2, 3, 5, k.shape[2]) and bias.dtype == q.dtype
    assert all(bias.stride(i) % 8 == 0 for i in range(3) if bias.stride(i)) and bias.stride(-1) == 1
    if mask_kind == "aligned":
        assert bias.data_ptr() == mask.data_ptr()                # already aligned: the same storage
    expect = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)     # same values, maybe another kernel
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    if mask_kind == "bool":
        assert set(call.mask.unique().tolist()) == {0.0, float("-inf")}


def test_cudnn_call_and_other_backends() -> None:
    from difflens.attention.kernels import cuda_kernel_call

    q = torch.randn(1, 2, 4, 8)
    add = torch.randn(1, 1, 4, 4)
    call = cuda_kernel_call(3, q, q, q, add, 0.25)
    assert not isinstance(call, str)
    assert call.op == "_scaled_dot_product_cudnn_attention" and call.args[3] is add
    assert call.args[4:] == (True, 0.0, False, False) and call.kwargs == {"scale": 0.25}
    assert "boolean" in cuda_kernel_call(3, q, q, q, add > 0, None)       # type: ignore[operator]
    assert "backend 0" in cuda_kernel_call(0, q, q, q, None, None)         # type: ignore[operator]


def test_lse_rows_shapes() -> None:
    from difflens.attention.kernels import lse_rows

    q = torch.zeros(2, 3, 5, 8)
    lse = torch.randn(2, 3, 32)                                  # memory-efficient: L padded to 32
    assert torch.equal(lse_rows(lse, q), lse[..., :5])
    assert torch.equal(lse_rows(lse[..., :5, None].contiguous(), q), lse[..., :5])   # cuDNN (B, H, L, 1)
    assert lse_rows(torch.zeros(2, 3, 4), q) is None
    assert lse_rows(torch.zeros(2, 5, 3), q) is None


def test_cuda_branch_plumbing_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """SdpaTap's CUDA branch (run the kernel, slice, keep lse, verify, fall back) with the kernel call
    swapped for the CPU flash op: a CPU stand-in for what only a GPU runs."""
    import difflens.attention.lse as lse_mod
    from difflens.attention.kernels import KernelCall

    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))

    def fake(choice: int, q: Any, k: Any, v: Any, mask: Any, scale: Any) -> KernelCall:
        return KernelCall("flash", "_scaled_dot_product_flash_attention_for_cpu", (q, k, v, 0.0, False),
                          {"attn_mask": None, "scale": scale}, int(q.shape[-1]), None)

    monkeypatch.setattr(lse_mod, "cuda_kernel_call", fake)
    sdpa = F.scaled_dot_product_attention
    a = lse_mod._sdpa_arguments((q, k, v), {})
    with torch.no_grad():
        tap = SdpaTap(verify=True)
        tap.calls = 1
        out = tap._handle_cuda(sdpa, (q, k, v), {}, a)
    assert tap.record is not None and tap.record.output_equal is True and tap.record.backend == "flash"
    assert torch.equal(out, sdpa(q, k, v))
    s = q @ k.transpose(-1, -2) / 8 ** 0.5
    torch.testing.assert_close(tap.record.lse, torch.logsumexp(s, -1), rtol=0, atol=5e-6)

    def broken(*args: Any, **kwargs: Any) -> KernelCall:
        return KernelCall("efficient", "_no_such_op", (), {}, 8, None)

    monkeypatch.setattr(lse_mod, "cuda_kernel_call", broken)
    tap = SdpaTap()
    with torch.no_grad():
        out = tap._handle_cuda(sdpa, (q, k, v), {}, a)
    assert tap.record is None and "kernel call failed" in (tap.reason or "")
    assert torch.equal(out, sdpa(q, k, v))


def test_layer_falls_back_when_the_lse_route_disagrees(monkeypatch: pytest.MonkeyPatch,
                                                       tiny_pipeline_dir: Callable[[str], Path]) -> None:
    """A kernel whose log-sum-exp were in other units would give other probabilities: the first-call
    comparison with the replay (LSE_GUARD) then keeps the replay route, whose maps are returned."""
    import difflens.attention.capture as cap_mod

    real = cap_mod.lse_columns

    def skewed(*args: Any, **kwargs: Any) -> Any:
        res = real(*args, **kwargs)
        if res is not None:
            res["planes"] = res["planes"] * 1.01
        return res

    path = tiny_pipeline_dir("sd15")
    pipe = load_pipeline(path, "float32", "cpu", offline=True)
    cfg = AttentionConfig(model=str(path), prompt="a photo of a cat", steps=2, seed=1, height=32, width=32,
                          image_check=False)
    plan = plan_attention(cfg, pipe)
    slow, _, _ = _capture(plan, "replay")
    monkeypatch.setattr(cap_mod, "lse_columns", skewed)
    got, cap, _ = _capture(plan, "auto")
    assert {i.route for i in cap.info} == {"replay"}
    assert all("differed from the replay" in (i.fallback_reason or "") for i in cap.info)
    np.testing.assert_allclose(got.maps, slow.maps, rtol=0, atol=1e-7)


def test_verification_is_kept_per_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-call bit-equality check runs the real SDPA once per argument layout and process; a
    layout seen before reuses the verdict (a False verdict still returns the real call's output)."""
    import difflens.attention.lse as lse_mod

    monkeypatch.setattr(lse_mod, "_VERIFIED", {})
    calls = []

    def sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return F.scaled_dot_product_attention(*args, **kwargs)

    q = torch.randn(1, 2, 9, 8)
    with torch.no_grad():
        for n in (1, 1):
            tap = SdpaTap(verify=True)
            out = tap.handle(sdpa, (q, q, q), {})
            assert tap.record is not None and tap.record.output_equal is True
            assert len(calls) == n and torch.equal(out, F.scaled_dot_product_attention(q, q, q))
        (key,) = lse_mod._VERIFIED
        lse_mod._VERIFIED[key] = False
        tap = SdpaTap(verify=True)
        tap.handle(sdpa, (q, q, q), {})
        assert tap.record is not None and tap.record.output_equal is False and len(calls) == 2
        q2 = torch.randn(1, 2, 10, 8)                               # another layout: verified again
        tap = SdpaTap(verify=True)
        tap.handle(sdpa, (q2, q2, q2), {})
        assert len(calls) == 3 and len(lse_mod._VERIFIED) == 2


def test_entropy_and_peak_equal_the_separate_measures() -> None:
    """The aggregator's one-pass measures equal spatial_entropy and peak_concentration (float32 rounding:
    the same formulas, different summation/selection order), including an all-zero map (uniform) and a
    single-pixel map."""
    from difflens.attention.measures import entropy_and_peak, peak_concentration, spatial_entropy

    g = torch.Generator().manual_seed(3)
    maps = torch.rand(3, 5, 16, 16, generator=g) ** 6
    maps[0, 0] = 0.0
    maps[1, 2] = 0.0
    maps[1, 2, 4, 7] = 2.0
    ent, peak = entropy_and_peak(maps)
    torch.testing.assert_close(ent, spatial_entropy(maps), rtol=0, atol=1e-6)
    torch.testing.assert_close(peak, peak_concentration(maps), rtol=0, atol=1e-6)
    assert abs(float(ent[0, 0]) - 1.0) < 1e-6 and float(ent[1, 2]) == 0.0 and float(peak[1, 2]) == 1.0
    one = torch.rand(2, 1, 1, generator=g)
    e1, p1 = entropy_and_peak(one)
    assert torch.equal(e1, spatial_entropy(one)) and torch.equal(p1, peak_concentration(one))


def test_first_call_checks_are_reused_for_the_same_layout(tiny_pipeline_dir: Callable[[str], Path]) -> None:
    """A second capture of the same modules and call layout (a sweep over prompts) takes the first call's
    checks from the first capture instead of replaying it: same check values (lse drift included), same maps
    (to float32 noise: its first call is then scored in the deferred batch, the first capture's at once);
    another image size is another layout and is checked again."""
    path = tiny_pipeline_dir("flux")
    pipe = load_pipeline(path, "float32", "cpu", offline=True)

    def plan_for(size: int) -> Any:
        return plan_attention(AttentionConfig(model=str(path), prompt="a photo of a cat", steps=2, seed=1,
                                              height=size, width=size, max_sequence_length=32,
                                              image_check=False), pipe)

    first, cap1, _ = _capture(plan_for(32), "auto")
    again, cap2, _ = _capture(plan_for(32), "auto")
    other, cap3, _ = _capture(plan_for(48), "auto")
    assert not any(i.checks_reused for i in cap1.info)
    assert all(i.checks_reused for i in cap2.info)
    assert not any(i.checks_reused for i in cap3.info)
    for a, b in zip(cap1.info, cap2.info, strict=True):
        assert b.route == a.route == "lse"
        assert (b.sum_error, b.out_error, b.route_error, b.lse_error, b.lse_drift) == (
            a.sum_error, a.out_error, a.route_error, a.lse_error, a.lse_drift)
        assert a.sum_error is not None and a.out_error is not None and a.lse_drift is not None
    np.testing.assert_allclose(again.maps, first.maps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(again.token_entropy, first.token_entropy, rtol=0, atol=1e-6)
    assert other.maps.shape != first.maps.shape


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 1])
def test_identical_trailing_text_keys_are_scored_once(chunk_bytes: int) -> None:
    """Joint attention whose last text keys are one key (an SD3 pipeline without T5 pads with zeros): the
    run is found, scored once and counted; the planes equal the full softmax's in float64 (kept tokens
    inside the run included), whole or one (row, head) at a time; a layer without such a run is left as is."""
    from difflens.attention.lse import TapRecord
    from difflens.attention.text_probs import MIN_RUN, Ranges, lse_columns

    gen = torch.Generator().manual_seed(0)
    n_img, n_text, d = 16, 10 + 2 * MIN_RUN, 8
    q = torch.randn(2, 2, n_img + n_text, d, generator=gen)
    k = torch.randn(2, 2, n_img + n_text, d, generator=gen)
    k[:, :, n_img + 10:] = k[:, :, n_img + 10:n_img + 11]           # keys 10.. of the text are one key
    scale = d ** -0.5
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, 0.0, False, scale=scale)
    rng = Ranges(slice(0, n_img), slice(n_img, n_img + n_text), n_img + n_text, n_img + n_text, True)
    keys = torch.tensor([0, 3, 10, n_text - 1])
    p = torch.softmax(scale * q.double() @ k.double().transpose(-1, -2), dim=-1)[1:, :, :n_img, n_img:]
    total = p.sum(-1, keepdim=True)
    pt = p[..., keys]
    ref = torch.cat([pt, total, pt / total], dim=-1).mean(dim=(0, 1)).t()      # (2T + 1, Nq)
    memo: dict[str, Any] = {}
    for _ in range(2):                                    # found, then confirmed from the memo
        got = lse_columns(TapRecord(q, k, lse, None, scale), rng, slice(1, 2), keys, head_entropy=False,
                          chunk_bytes=chunk_bytes, memo=memo)
        assert memo["run_start"] == 10
        np.testing.assert_allclose(got["planes"].double().numpy(), ref.numpy(), rtol=0, atol=1e-6)
    k2 = torch.randn(2, 2, n_img + n_text, d, generator=gen)
    memo2: dict[str, Any] = {}
    lse_columns(TapRecord(q, k2, lse, None, scale), rng, slice(1, 2), keys, head_entropy=False,
                chunk_bytes=chunk_bytes, memo=memo2)
    assert memo2["run_start"] is None


@pytest.mark.parametrize("layout", ["rsd", "rds", "r1s"])
def test_flat_rows_views_equal_slicing(layout: str) -> None:
    """The one-call strided view equals slicing + reshape, for a kernel-style (B, L, H, d) memory layout seen
    as (B, H, L, d), one row or two; non-float32 input takes the copying path with the same values."""
    from difflens.attention.text_probs import _flat_rows

    base = torch.randn(3, 20, 4, 8)                        # (B, L, H, d) in memory
    t = base.permute(0, 2, 1, 3) if layout != "r1s" else base[..., 0].permute(0, 2, 1)
    for rows in (slice(1, 2), slice(0, 3)):
        for dtype in (torch.float32, torch.float16):
            src = t.to(dtype)
            got = _flat_rows(src, rows, slice(5, 17), layout)
            ref = src[rows, :, 5:17].float()
            n = ref.shape[0] * ref.shape[1]
            ref = (ref.reshape(n, 1, 12) if layout == "r1s" else ref.reshape(n, 12, 8) if layout == "rsd"
                   else ref.reshape(n, 12, 8).transpose(1, 2))
            assert got.dtype == torch.float32 and got.shape == ref.shape
            assert torch.equal(got, ref)


@pytest.mark.parametrize("skew", [0.0, 0.5])
def test_cross_attention_scores_kept_keys_only_once_the_lse_agrees(skew: float) -> None:
    """Cross attention on CPU: the first call (drift) checks the kernel's lse against the scores; only when
    it agrees do later calls score just the kept tokens' keys with exp(s - lse). An lse in other units
    (skewed by 0.5) keeps the normalized softmax. Either way the planes equal a float64 softmax."""
    from difflens.attention.lse import TapRecord
    from difflens.attention.text_probs import Ranges, lse_columns

    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 20, 8, generator=gen)
    k = torch.randn(2, 3, 12, 8, generator=gen)
    scale = 8 ** -0.5
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, 0.0, False, scale=scale)
    rec = TapRecord(q, k, lse + skew, None, scale)
    rng = Ranges(slice(0, 20), slice(0, 12), 20, 12, False)
    keys = torch.tensor([1, 4, 11])
    p = torch.softmax(scale * q.double() @ k.double().transpose(-1, -2), dim=-1)[1:]
    ref = p[..., keys].mean(dim=(0, 1)).t()                                    # (K, Nq)
    memo: dict[str, Any] = {}
    first = lse_columns(rec, rng, slice(1, 2), keys, head_entropy=False, chunk_bytes=1 << 20, memo=memo)
    assert memo["lse_agrees"] is (skew == 0.0)
    later = lse_columns(rec, rng, slice(1, 2), keys, head_entropy=False, chunk_bytes=1 << 20, drift=False,
                        memo=memo)
    for got in (first, later):
        np.testing.assert_allclose(got["planes"].double().numpy(), ref.numpy(), rtol=0, atol=1e-6)
