"""The schedule tracer's control of ``randn_tensor`` is scoped to the tracing thread: another thread drawing
noise at the same time (a pipeline generating in the background) gets exactly diffusers' own draws."""

from __future__ import annotations

import sys
import threading

import pytest

torch = pytest.importorskip("torch")


def test_controlled_noise_does_not_leak_to_other_threads() -> None:
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.utils.torch_utils import randn_tensor as diffusers_randn

    from difflens.schedule.adapt import adapt
    from difflens.schedule.trace import _SHAPE, _controlled_noise, _probe_vectors, _State, trace

    sched = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear")
    mod = sys.modules[type(sched).__module__]
    x0, n = _probe_vectors(0)
    state = _State(x0, n, seed=0)
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def tracer() -> None:
        with _controlled_noise(sched, state):
            seen["traced"] = mod.randn_tensor(_SHAPE, generator=torch.Generator().manual_seed(1))
            inside.set()
            release.wait(30)

    t = threading.Thread(target=tracer)
    t.start()
    assert inside.wait(30)
    try:  # the tracing thread is inside the context now: this thread must see diffusers' draw
        other = mod.randn_tensor(_SHAPE, generator=torch.Generator().manual_seed(1))
    finally:
        release.set()
        t.join(30)
    expected = diffusers_randn(_SHAPE, generator=torch.Generator().manual_seed(1))
    assert torch.equal(other, expected)  # same function, same generator state: bit-identical
    assert state.noise_draws == 1  # only the tracing thread's draw was controlled
    traced = seen["traced"]
    assert isinstance(traced, torch.Tensor)
    # the controlled draw is orthogonal to x0: a free draw gives z.x0 ~ N(0, |x0|^2), the controlled one
    # only float32 round-off (far below 1e-3 |x0|)
    assert abs(float((traced.double() * x0).sum())) < 1e-3 * float(x0.norm())
    assert not torch.equal(traced, expected)
    # after the context, the calling thread draws diffusers' noise again, and the wrapper is installed once
    assert torch.equal(mod.randn_tensor(_SHAPE, generator=torch.Generator().manual_seed(1)), expected)
    wrapper = mod.randn_tensor
    trace(sched, adapt(sched), 4)
    assert mod.randn_tensor is wrapper and wrapper.__wrapped__ is diffusers_randn
