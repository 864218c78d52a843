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
