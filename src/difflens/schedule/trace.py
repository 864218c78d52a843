"""Trace a scheduler's inference: run its own ``set_timesteps`` and ``step()`` on dummy tensors with an oracle
model, and measure the noise level of every sample the model would see.

The dummy sample is ``x = A x0 + S n`` with a fixed clean signal ``x0`` (entries +-0.5, inside every
``clip_sample`` range) and a unit-variance noise direction ``n`` orthogonal to it. The oracle returns the
exact prediction of the scheduler's type (epsilon: n; sample: x0; v: alpha n - sigma x0; flow velocity: n -
x0), so an exact solver stays on the true path and whatever ``step()`` returns can be read back by projection:
A = <x, x0> / <x0, x0>, S = |x - A x0| / sqrt(d), lambda = 2 ln(A / S) (scale-free, so VP, VE and flow samples
all land on the same axis). This records what inference really visits: DDIM's ``prev_t = t - T // n`` under
linspace spacing, Heun's and KDPM2's double evaluations, LCM's re-noising, a zero-SNR step that produces NaN.
Fresh noise that ``step()`` draws is drawn orthogonal to the signal (see :func:`_controlled_noise`), so
stochastic samplers are traced exactly too. EDM and consistency-model schedulers get the preconditioned output
F with c_skip x + c_out F = x0.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difflens.errors import DifflensError
from difflens.schedule.adapt import Schedule, accepts

#: Shape of the dummy sample (2^16 elements); traced levels are exact to float32 round-off.
_SHAPE = (1, 4, 128, 128)


@dataclass(frozen=True)
class Trace:
    """What one inference run visits, one entry per model evaluation (``step()`` call)."""

    num_inference_steps: int
    timesteps: np.ndarray  # the timestep passed to the model at each evaluation (scheduler.timesteps)
    log_snr: np.ndarray  # traced lambda of the sample the model sees at each evaluation
    final_log_snr: float  # lambda of the sample returned by the last step()
    stochastic: bool  # step() draws fresh noise (ancestral, DDPM, LCM...); drawn controlled, see below
    set_timesteps_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def evaluations(self) -> int:
        return len(self.timesteps)


class _State:
    """Mutable trace state shared with the noise hook."""

    def __init__(self, x0: Any, n: Any, seed: int) -> None:
        import torch

        self.x0 = x0
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.noise_draws = 0


def _probe_vectors(seed: int) -> tuple[Any, Any]:
    """x0 with entries +-0.5 and a noise direction exactly orthogonal to it with |n|^2 = d (float64)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x0 = (torch.randint(0, 2, _SHAPE, generator=g, dtype=torch.float64) - 0.5)
    n = torch.randn(_SHAPE, generator=g, dtype=torch.float64)
    return x0, _orthonormal(n, [x0])


def _orthonormal(z: Any, against: list[Any]) -> Any:
    """z made exactly orthogonal to each vector in ``against`` (Gram-Schmidt, float64), with |z|^2 = d."""
    z = z.double()
    for v in against:
        if v is not None:
            z = z - (z * v).sum() / (v * v).sum() * v
    return z * math.sqrt(z.numel()) / z.norm()


#: The trace state of the calling thread (``_LOCAL.state``), read by the ``randn_tensor`` wrappers.
_LOCAL = threading.local()
_INSTALL_LOCK = threading.Lock()


def _noise_wrapper(orig: Any) -> Any:
    """A stand-in for a scheduler module's ``randn_tensor``: the original everywhere, except in a thread that
    is inside :func:`_controlled_noise`, where draws of the dummy sample's shape are controlled."""
    import torch

    def randn_tensor(shape: Any, *args: Any, **kwargs: Any) -> Any:
        state = getattr(_LOCAL, "state", None)
        if state is None or tuple(shape) != _SHAPE:
            return orig(shape, *args, **kwargs)
        state.noise_draws += 1
        z = torch.randn(_SHAPE, generator=state.gen, dtype=torch.float64)
        z = _orthonormal(z, [state.x0, state.n])
        dtype = kwargs.get("dtype") or (args[2] if len(args) > 2 else None) or torch.float32
        return z.to(dtype=dtype)

    randn_tensor.__wrapped__ = orig  # type: ignore[attr-defined]
    randn_tensor.difflens_trace_wrapper = True  # type: ignore[attr-defined]
    return randn_tensor


@contextlib.contextmanager
def _controlled_noise(scheduler: Any, state: _State) -> Iterator[None]:
    """Within the trace only, make the scheduler's fresh noise (its module's ``randn_tensor``) exactly
    orthogonal to x0 and to the current noise direction, with exact unit variance.

    In expectation nothing changes, but the traced noise level of a stochastic step (ancestral Euler,
    DDPM, LCM) becomes exactly the one the scheduler intends instead of one noisy draw: with a random draw
    the estimate of A carries an error of about 2 S / (A sqrt(d)), 0.07 in lambda at lambda = -4.5 even
    with d = 2^18.

    Scope: the scheduler's modules get a pass-through wrapper once (installed under a lock, never removed,
    never stacked); the wrapper changes draws only in the thread that is inside this context, so a pipeline
    running in another thread at the same time draws its noise exactly as diffusers does. Nested traces
    restore the outer state on exit.
    """
    modules = {sys.modules.get(klass.__module__) for klass in type(scheduler).__mro__}
    with _INSTALL_LOCK:
        for mod in modules:
            orig = getattr(mod, "randn_tensor", None) if mod is not None else None
            if orig is not None and not getattr(orig, "difflens_trace_wrapper", False):
                mod.randn_tensor = _noise_wrapper(orig)
    outer = getattr(_LOCAL, "state", None)
    _LOCAL.state = state
    try:
        yield
    finally:
        _LOCAL.state = outer


#: |A| / S (or S / |A|) below this is float32 round-off of the dummy sample, reported as pure noise (-inf) or
#: clean (+inf): |lambda| > 23.
_FLOOR = 1e-5


def _measure(x: Any, x0: Any) -> tuple[float, float, Any]:
    """(A, S, n) of x = A x0 + S n, with n the unit-variance noise direction (None when S is 0)."""
    xd = x.double()
    a = float((xd * x0).sum() / (x0 * x0).sum())
    r = xd - a * x0
    s = float(r.norm()) / math.sqrt(r.numel())
    if math.isfinite(a) and math.isfinite(s):
        if abs(a) <= _FLOOR * s:
            a = 0.0
        if s <= _FLOOR * abs(a):
            s = 0.0
    n = r / s if s > 0 and math.isfinite(s) else None
    return a, s, n


def _lam(a: float, s: float) -> float:
    if not (math.isfinite(a) and math.isfinite(s)):
        return float("nan")
    if s == 0.0:
        return float("inf") if a != 0.0 else float("nan")
    if a == 0.0:
        return float("-inf")
    return 2.0 * (math.log(abs(a)) - math.log(s))


def oracle_kind(scheduler: Any, prediction_type: str) -> str:
    """How the exact model output is formed: the prediction type, or a preconditioned/consistency output."""
    if hasattr(scheduler, "get_scalings_for_boundary_condition"):
        return "consistency"
    if hasattr(scheduler, "precondition_outputs"):
        return "edm"
    return prediction_type


def _oracle(scheduler: Any, kind: str, a: float, s: float, x: Any, x0: Any, n: Any) -> Any:
    """The exact model output of kind ``kind`` for the sample x = a x0 + s n."""
    import torch

    if kind == "epsilon":
        return n
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        norm = math.hypot(a, s)
        return (a / norm) * n - (s / norm) * x0
    if kind == "flow_prediction":
        return n - x0
    if kind in ("edm", "consistency"):
        # denoised = c_skip x + c_out F  =>  F = (x0 - c_skip x) / c_out, with the VE sigma = s / a
        sigma = torch.tensor(s / a if a else float("inf"), dtype=torch.float64)
        if kind == "edm":
            one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
            c_skip = float(scheduler.precondition_outputs(one, zero, sigma))
            c_out = float(scheduler.precondition_outputs(zero, one, sigma))
        else:
            c_skip, c_out = (float(c) for c in scheduler.get_scalings_for_boundary_condition(sigma))
        if c_out == 0.0:
            return torch.zeros_like(x0)
        return (x0 - c_skip * x.double()) / c_out
    raise DifflensError(f"cannot trace prediction_type {kind!r}: difflens knows epsilon, sample, "
                        "v_prediction "
                        "and flow velocity.", "set prediction_type in the scheduler config to one of those")


def _start_coeffs(scheduler: Any, sched: Schedule, t0: Any) -> tuple[float, float]:
    """(A, S) of the first sample, in the scheduler's own sample space, at the scheduler's first noise
    level."""
    import torch

    sig = getattr(scheduler, "sigmas", None)
    if sched.sample_space == "vp_sigma" and sig is not None:
        a, s = scheduler._sigma_to_alpha_sigma_t(torch.as_tensor(sig[0]))
        return float(a), float(s)
    if sched.sample_space == "flow" and sig is not None:
        s0 = float(sig[0])
        return 1.0 - s0, s0
    if sched.sample_space == "ve" and sig is not None:
        return 1.0, float(sig[0])
    if sched.class_name == "IPNDMScheduler":
        return float(scheduler.alphas[0]), float(scheduler.betas[0])
    lam = float(sched.log_snr_at(np.asarray([float(t0)]))[0])
    if math.isnan(lam):
        raise DifflensError(f"{sched.class_name}: the first timestep {float(t0):g} is outside its training "
                            "table.",
                            "check the scheduler config")
    a = 1.0 / (1.0 + math.exp(-lam)) if math.isfinite(lam) else (0.0 if lam < 0 else 1.0)
    return math.sqrt(a), math.sqrt(1.0 - a)


def set_timesteps(scheduler: Any, steps: int, mu: float | None = None,
                  pipeline_class: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Call the scheduler's own ``set_timesteps`` as the pipeline would (Flux's pipeline passes its own
    sigma grid); return the extra kwargs used and notes."""
    kwargs: dict[str, Any] = {}
    notes: list[str] = []
    name = type(scheduler).__name__
    dynamic = bool(dict(scheduler.config).get("use_dynamic_shifting"))
    if mu is not None and dynamic and accepts(scheduler.set_timesteps, "mu"):
        kwargs["mu"] = float(mu)
    flux = (pipeline_class or "").startswith("Flux") and name.startswith("FlowMatch")
    if flux and accepts(scheduler.set_timesteps, "sigmas"):
        kwargs["sigmas"] = np.linspace(1.0, 1.0 / steps, steps).tolist()
        notes.append(f"set_timesteps called as {pipeline_class} does: sigmas = linspace(1, 1/n, n) before "
                     "the shift")
    try:
        scheduler.set_timesteps(steps, **kwargs)
    except (ValueError, TypeError, IndexError, RuntimeError, AssertionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DifflensError(f"{name}.set_timesteps({steps}) failed: {msg}",
                            "use a step count this scheduler supports (--steps)") from None
    shown = {k: v for k, v in kwargs.items() if k != "sigmas"}
    if "sigmas" in kwargs:
        shown["sigmas"] = "linspace(1, 1/n, n)"
    return shown, notes


def _run(scheduler: Any, sched: Schedule, seed: int, x0: Any,
         n0: Any) -> tuple[list[float], list[float], float, int]:
    import torch

    name = type(scheduler).__name__
    kind = oracle_kind(scheduler, sched.prediction_type)
    timesteps = scheduler.timesteps
    if name == "DDPMWuerstchenScheduler":  # the Wuerstchen pipeline iterates timesteps[:-1]
        timesteps = timesteps[:-1]
    listed = [float(t) for t in timesteps]
    a0, s0 = _start_coeffs(scheduler, sched, timesteps[0])
    sample = (a0 * x0 + s0 * n0).float()
    state = _State(x0, n0, seed)
    gen = torch.Generator().manual_seed(seed)
    takes_gen = accepts(scheduler.step, "generator")
    old_pred = None
    visited: list[float] = []
    with _controlled_noise(scheduler, state):
        for i, t in enumerate(timesteps):
            a, s, n = _measure(sample, x0)
            visited.append(_lam(a, s))
            if not math.isfinite(a) or not math.isfinite(s):
                visited.extend([float("nan")] * (len(timesteps) - i - 1))
                return listed, visited, float("nan"), state.noise_draws
            state.n = n if n is not None else n0
            if hasattr(scheduler, "scale_model_input"):
                with contextlib.suppress(TypeError):
                    scheduler.scale_model_input(sample, t)
            out = _oracle(scheduler, kind, a, s, sample, x0, state.n).float()
            variance = dict(scheduler.config).get("variance_type")
            if variance in ("learned", "learned_range") and hasattr(scheduler, "_get_variance"):
                # the model's second half of channels: the posterior variance beta~ (DDPM's fixed_small)
                if variance == "learned_range":
                    v = torch.full_like(out, -1.0)  # frac = (v + 1) / 2 = 0 -> log variance = log beta~
                else:
                    v = torch.full_like(out, float(scheduler._get_variance(t, variance_type="fixed_small")))
                out = torch.cat([out, v], dim=1)
            kwargs: dict[str, Any] = {}
            if takes_gen:
                kwargs["generator"] = gen
            if name == "UnCLIPScheduler":  # the unCLIP pipeline passes the next listed timestep
                kwargs["prev_timestep"] = timesteps[i + 1] if i + 1 < len(timesteps) else None
            if name == "CogVideoXDPMScheduler":  # as the CogVideoX pipeline calls it
                res = scheduler.step(out, old_pred, t, timesteps[i - 1] if i > 0 else None, sample,
                                     return_dict=False, **kwargs)
                sample, old_pred = res[0], res[1]
                continue
            if name == "DDPMWuerstchenScheduler":
                t = t.reshape(1)
            res = scheduler.step(out, t, sample, return_dict=False, **kwargs)
            sample = res[0]
    a, s, _ = _measure(sample, x0)
    return listed, visited, _lam(a, s), state.noise_draws


def trace(scheduler: Any, sched: Schedule, steps: int, mu: float | None = None,
          pipeline_class: str | None = None, seed: int = 0) -> Trace:
    """Run ``set_timesteps(steps)`` and every ``step()`` of one inference on a copy of ``scheduler``.

    Fresh noise drawn by ``step()`` is controlled (see :func:`_controlled_noise`); the trace is marked
    stochastic when ``step()`` draws any.
    """
    import torch

    name = type(scheduler).__name__
    n_train = sched.num_train_timesteps
    if n_train is not None and steps > n_train:
        raise DifflensError(f"--steps {steps} is larger than {name}'s {n_train} training timesteps.",
                            f"use at most {n_train} steps")
    if steps < 1:
        raise DifflensError(f"--steps must be at least 1, got {steps}.", "pass --steps 1 or more")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2^16-element ops: extra threads only cost, badly so on a busy machine
    try:
        x0, n0 = _probe_vectors(1234)
        sch = copy.deepcopy(scheduler)
        kwargs, notes = set_timesteps(sch, steps, mu, pipeline_class)
        with torch.no_grad(), np.errstate(all="ignore"):
            listed, visited, final, draws = _run(sch, sched, seed, x0, n0)
    except DifflensError:
        raise
    except Exception as exc:  # a scheduler's own step() failing is reported, named, as bad input
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DifflensError(f"{name}.step() failed while tracing {steps} steps: {type(exc).__name__}: {msg}",
                            "check the scheduler config, or pick another sampler with --scheduler") from None
    finally:
        torch.set_num_threads(threads)
    if draws:
        notes.append(f"step() drew fresh noise {draws} times; the trace drew it orthogonal to the signal "
                     "and the current noise, so the traced levels are the ones the scheduler intends")
    return Trace(
        num_inference_steps=steps, timesteps=np.asarray(listed, dtype=np.float64),
        log_snr=np.asarray(visited, dtype=np.float64), final_log_snr=float(final), stochastic=draws > 0,
        set_timesteps_kwargs=kwargs, notes=tuple(notes),
    )
