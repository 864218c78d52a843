"""Adapt any diffusers scheduler, once, into plain arrays on one log-SNR axis.

Every family reduces to the signal and noise coefficients of ``x_t = A x_0 + S eps`` and the log
signal-to-noise ratio ``lambda = 2 ln(A / S)`` (Kingma et al. 2021, "Variational Diffusion Models"):

- VP (``alphas_cumprod`` a): A = sqrt(a), S = sqrt(1 - a), so lambda = ln(a / (1 - a)).
- sigma (Karras et al. 2022, x = x_0 + sigma eps): lambda = -2 ln sigma; for the discrete-time sigma samplers
  (Euler, Heun, DPM-Solver...) sigma = sqrt((1 - a) / a), the same lambda as VP.
- flow matching (x_t = (1 - s) x_0 + s eps; Lipman et al. 2023, Esser et al. 2024): lambda = 2 ln((1 - s) /
  s). A shift ``k`` maps s -> k s / (1 + (k - 1) s), which moves lambda by exactly -2 ln k.

DPM-Solver's ``lambda_t`` is half of this lambda. Everything downstream of this module is array math.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difflens.errors import DifflensError

FAMILIES = ("vp", "sigma", "flow")

#: alphas_cumprod[T-1] value Euler/DPM-type schedulers substitute for 0 under ``rescale_betas_zero_snr``.
ZERO_SNR_CLAMP = 2.0**-24

_DISCRETE = ("it is a discrete (token) diffusion scheduler: its states are token ids under masking or "
             "uniform corruption, not Gaussian noise, so it has no signal-to-noise ratio")

#: Scheduler classes exported by diffusers that are refused, with the reason.
REFUSED: dict[str, str] = {
    "AmusedScheduler": _DISCRETE,
    "VQDiffusionScheduler": _DISCRETE,
    "BlockRefinementScheduler": _DISCRETE,
    "DiscreteDDIMScheduler": _DISCRETE,
    "EntropyBoundScheduler": _DISCRETE,
    "RePaintScheduler": ("it is an inpainting resampler: its timesteps jump back up (undo_step) and step() "
                         "needs an original image and mask; its noise schedule is DDPM's, so analyze "
                         "DDPMScheduler with the same config instead"),
    "KarrasVeScheduler": ("it is deprecated and its step() takes sigma_hat/sigma_prev from "
                          "add_noise_to_input instead of timesteps; use EDMEulerScheduler, its maintained "
                          "replacement"),
    "ScoreSdeVeScheduler": ("it is a predictor-corrector VE-SDE sampler with step_pred/step_correct and no "
                            "step(), so its inference cannot be traced like the others"),
    "SCMScheduler": ("it is a TrigFlow consistency sampler (sCM): each step() jumps to a clean estimate "
                     "and re-noises, and it has no training noise table (no alphas_cumprod or sigmas)"),
    "PiflowScheduler": ("its model output is a widened pi-Flow policy (n_grid predictions per channel) "
                        "that step() integrates internally, not one denoising prediction that can be traced"),
    "HeliosScheduler": ("it is a multi-stage (pyramid) video sampler: set_timesteps needs a stage index "
                        "and the resolution changes between stages, so there is no single noise schedule"),
    "HeliosDMDScheduler": ("it is a multi-stage (pyramid) distilled video sampler: set_timesteps needs a "
                           "stage index and the resolution changes between stages, so there is no single "
                           "noise schedule"),
    "MiniMaxH3Scheduler": ("it has no training noise table (no num_train_timesteps; its sigma grid exists "
                           "only after set_timesteps) and uses a reversed, data-ward velocity convention"),
    "RFD4ProteinaScheduler": ("it is a protein-structure flow sampler with temporal score rescaling and "
                              "model-specific required arguments (schedule_mode, noise_mode, tsr_k, "
                              "tsr_sigma), not an image noise schedule"),
}

#: Schedulers whose sample lives in VE space (x = x_0 + sigma eps) without exposing
#: ``_sigma_to_alpha_sigma_t``.
_VE_DEFAULT = "ve"


@dataclass(frozen=True)
class Schedule:
    """A scheduler's training noise schedule as plain float64 arrays, ordered by increasing noise.

    ``sigma`` is the family's own noise variable (VP and sigma families: sqrt((1-a)/a); flow: s).
    ``alphas_cumprod`` and ``betas`` are ``None`` where the scheduler does not define them.
    """

    class_name: str
    family: str
    prediction_type: str
    sample_space: str  # how step() scales samples: "vp" (A^2+S^2=1), "ve" (A=1) or "flow" (A+S=1)
    timesteps: np.ndarray
    log_snr: np.ndarray
    sigma: np.ndarray
    alphas_cumprod: np.ndarray | None
    betas: np.ndarray | None
    num_train_timesteps: int | None
    clamped_terminal: bool = False
    shift: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tau(self) -> np.ndarray:
        """Normalized training time in [0, 1]: position in the training table (0 = cleanest, 1 = noisiest)."""
        n = len(self.timesteps)
        return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)

    def _u(self, lam: np.ndarray) -> np.ndarray:
        """The variable interpolated between table entries: lambda itself, or for flow schedules the flow
        sigma s = 1 / (1 + e^(lambda/2)), which is linear in t and finite at lambda = -inf."""
        if self.family != "flow":
            return lam
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(lam / 2.0))

    def _lam(self, u: np.ndarray) -> np.ndarray:
        if self.family != "flow":
            return u
        return log_snr_flow(u)

    def log_snr_at(self, timesteps: np.ndarray) -> np.ndarray:
        """lambda the training table assigns to (possibly fractional) timesteps, interpolated between table
        entries (linear in lambda; in s for flow schedules); NaN outside the table's timestep range."""
        u = _interp(np.asarray(timesteps, dtype=np.float64), self.timesteps, self._u(self.log_snr))
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._lam(u)

    def tau_at(self, timesteps: np.ndarray) -> np.ndarray:
        """Normalized time of (possibly fractional) timesteps; NaN outside the table."""
        return _interp(np.asarray(timesteps, dtype=np.float64), self.timesteps, self.tau)

    def timestep_at_log_snr(self, log_snr: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`log_snr_at`: the (fractional) training timestep with that lambda; NaN outside."""
        lam = np.asarray(log_snr, dtype=np.float64)
        u_table, u = self._u(self.log_snr), self._u(lam)
        ok = ~np.isnan(u_table) & (np.isfinite(u_table) if self.family != "flow" else True)
        xs, ys = u_table[ok], self.timesteps[ok]
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], ys[order]
        out = np.full(lam.shape, np.nan)
        if len(xs) < 2 or np.any(np.diff(xs) <= 0):
            return out
        slack = 1e-6 * (1.0 + np.abs(np.where(np.isfinite(u), u, 0.0)))  # float32 round-off at the ends
        inside = ~np.isnan(u) & np.isfinite(u) & (u >= xs[0] - slack) & (u <= xs[-1] + slack)
        out[inside] = np.interp(u[inside], xs, ys)
        return out


def _interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    order = np.argsort(xp, kind="stable")
    xs, ys = xp[order], fp[order]
    out = np.full(np.shape(x), np.nan)
    inside = np.isfinite(x) & (x >= xs[0] - 1e-6) & (x <= xs[-1] + 1e-6)
    with np.errstate(invalid="ignore"):
        out[inside] = np.interp(x[inside], xs, ys)
    return out


def log_snr_vp(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda = ln(a / (1 - a)); -inf where a = 0 (zero terminal SNR), +inf where a = 1."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(a) - np.log1p(-a)


def log_snr_sigma(sigma: np.ndarray) -> np.ndarray:
    """lambda = -2 ln sigma for x = x_0 + sigma eps (Karras et al. 2022)."""
    with np.errstate(divide="ignore"):
        return -2.0 * np.log(np.asarray(sigma, dtype=np.float64))


def log_snr_flow(s: np.ndarray) -> np.ndarray:
    """lambda = 2 ln((1 - s) / s) for x = (1 - s) x_0 + s eps; -inf at s = 1 (pure noise)."""
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 2.0 * (np.log1p(-s) - np.log(s))


def flow_shift(u: np.ndarray, shift: float) -> np.ndarray:
    """SD3's shift: s = k u / (1 + (k - 1) u) (Esser et al. 2024, eq. 23); lambda(s) = lambda(u) - 2 ln k."""
    u = np.asarray(u, dtype=np.float64)
    return shift * u / (1.0 + (shift - 1.0) * u)


def dynamic_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's ``calculate_shift``: mu linear in the image token count from (base_seq_len, base_shift) to
    (max_seq_len, max_shift); the exponential time shift then uses k = e^mu."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(image_seq_len * m + base_shift - m * base_seq_len)


def effective_shift(config: dict[str, Any], mu: float | None) -> float:
    """The flow shift k applied to the sigma grid: the static ``shift`` (``flow_shift`` for DPM/UniPC-style
    schedulers), or, with ``use_dynamic_shifting``, e^mu (exponential time shift) or mu (linear)."""
    if config.get("use_dynamic_shifting"):
        if mu is None:
            raise DifflensError("this scheduler uses dynamic shifting, which needs the image size.",
                                "pass --height and --width")
        return float(mu) if config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)
    return float(config.get("shift", config.get("flow_shift", 1.0)) or 1.0)


def uses_dynamic_shifting(scheduler: Any) -> bool:
    return bool(dict(scheduler.config).get("use_dynamic_shifting", False))


def refusal_reason(class_name: str) -> str | None:
    return REFUSED.get(class_name)


def refuse(class_name: str, reason: str) -> DifflensError:
    return DifflensError(f"{class_name} cannot be analyzed: {reason}.",
                         "pick another sampler with --scheduler (e.g. DDIMScheduler, "
                         "EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)")


def _np(x: Any) -> np.ndarray:
    if x is None:
        return None  # type: ignore[return-value]
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _family(scheduler: Any) -> str:
    name = type(scheduler).__name__
    cfg = dict(scheduler.config)
    has_ac = getattr(scheduler, "alphas_cumprod", None) is not None
    sig = getattr(scheduler, "sigmas", None)
    if cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        return "flow"
    if name.startswith(("FlowMatch", "FlowMap")) or name == "LTXEulerAncestralRFScheduler":
        return "flow"
    if has_ac:
        return "sigma" if sig is not None else "vp"
    if name in ("DDPMWuerstchenScheduler", "IPNDMScheduler"):
        return "vp"
    if sig is not None:
        s = _np(sig)
        s = s[np.isfinite(s)]
        return "flow" if len(s) and s.max() <= 1.0 + 1e-6 else "sigma"
    raise refuse(name, "it exposes neither alphas_cumprod nor sigmas, so its noise levels are unknown")


def _sample_space(scheduler: Any, family: str) -> str:
    if hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        return "vp_sigma"  # the scheduler converts sigma to (alpha_t, sigma_t) itself
    if family == "vp":
        return "vp"
    if family == "flow":
        return "flow"
    return _VE_DEFAULT


def prediction_type(scheduler: Any, family: str) -> str:
    """What the model is expected to output: the config's ``prediction_type``; flow schedulers without one
    expect the flow velocity eps - x_0; IPNDM's update assumes v-prediction."""
    name = type(scheduler).__name__
    cfg = dict(scheduler.config)
    if name == "IPNDMScheduler":
        return "v_prediction"
    if hasattr(scheduler, "get_scalings_for_boundary_condition"):
        return "sample"  # consistency models: the output F enters as x0 = c_skip x + c_out F
    pred = cfg.get("prediction_type")
    if family == "flow" and pred in (None, "flow_prediction", "epsilon") and not cfg.get("use_flow_sigmas"):
        return "flow_prediction"
    if pred is None:
        return "epsilon"
    return str(pred)


def _train_from_alphas(scheduler: Any, family: str) -> tuple[np.ndarray, ...]:
    a = _np(scheduler.alphas_cumprod)
    t = np.arange(len(a), dtype=np.float64)
    lam = log_snr_vp(a)
    with np.errstate(divide="ignore"):
        sigma = np.sqrt((1.0 - a) / a)
    return t, lam, sigma, a


def adapt(scheduler: Any, mu: float | None = None) -> Schedule:
    """Adapt a diffusers scheduler instance (fresh, before ``set_timesteps``) into a :class:`Schedule`.

    ``mu`` is the dynamic-shift parameter for schedulers with ``use_dynamic_shifting`` (see
    :func:`dynamic_shift_mu`); their training table is reported at that shift. Raises
    :class:`~difflens.errors.DifflensError` naming the reason for schedulers that cannot be adapted.
    """
    name = type(scheduler).__name__
    reason = refusal_reason(name)
    if reason is not None:
        raise refuse(name, reason)
    cfg = dict(scheduler.config)
    family = _family(scheduler)
    space = _sample_space(scheduler, family)
    pred = prediction_type(scheduler, family)
    n_train = cfg.get("num_train_timesteps")
    notes: list[str] = []
    betas = _np(getattr(scheduler, "betas", None)) if family != "flow" else None
    alphas: np.ndarray | None = None
    clamped = False
    shift: float | None = None

    if family == "flow":
        if not n_train:
            raise refuse(name, "it has no num_train_timesteps, so there is no training timestep table")
        shift = effective_shift(cfg, mu)
        u = np.arange(1, int(n_train) + 1, dtype=np.float64) / float(n_train)
        s = flow_shift(u, shift)
        t, lam, sigma = s * n_train, log_snr_flow(s), s
        if cfg.get("use_dynamic_shifting"):
            notes.append("dynamic shifting: training table shown at the image size's shift e^mu = "
                         f"{shift:.4g} (mu = {mu:.4g})")
        elif shift != 1.0:
            notes.append(f"static flow shift {shift:g}: lambda moves by -2 ln {shift:g} = "
                         f"{-2 * math.log(shift):.4g}")
    elif name == "DDPMWuerstchenScheduler":
        import torch

        t = np.linspace(0.0, 1.0, 1001)
        a = _np(scheduler._alpha_cumprod(torch.tensor(t, dtype=torch.float64), torch.device("cpu")))
        lam = log_snr_vp(a)
        sigma, alphas = np.sqrt((1.0 - a) / a), a
        notes.append("continuous-time cosine schedule (t in [0, 1]); alphas_cumprod clamped to [1e-4, "
                     "0.9999] by the scheduler")
    elif name == "IPNDMScheduler":
        # IPNDM builds its grid in set_timesteps (called with num_train_timesteps in __init__):
        # sample = alpha x0 + sigma eps with alpha = self.alphas, sigma = self.betas, alpha^2 + sigma^2 = 1.
        A = _np(scheduler.alphas)[:-1]
        S = _np(scheduler.betas)[:-1]
        t = _np(scheduler.timesteps)
        with np.errstate(divide="ignore"):
            lam = 2.0 * (np.log(A) - np.log(S))
            sigma = S / A
        alphas, betas = A**2, None
        notes.append("IPNDM has no training betas: its table is the v-diffusion grid it builds for "
                     "num_train_timesteps steps (timesteps in [0, 1])")
    elif getattr(scheduler, "alphas_cumprod", None) is not None:
        t, lam, sigma, alphas = _train_from_alphas(scheduler, family)
        if cfg.get("timestep_type") == "continuous":  # Euler for EDM-style v models: t = c_noise(sigma)
            with np.errstate(divide="ignore"):
                t = 0.25 * np.log(sigma)
            notes.append("timestep_type='continuous': timesteps are c_noise = 0.25 ln sigma")
        if alphas[-1] == np.float64(np.float32(ZERO_SNR_CLAMP)) and cfg.get("rescale_betas_zero_snr"):
            clamped = True
            notes.append(f"alphas_cumprod[{len(alphas) - 1}] was clamped by {name} from 0 to 2^-24 under "
                         f"rescale_betas_zero_snr, so lambda_T = {lam[-1]:.2f} instead of -inf")
    else:  # sigma family without alphas_cumprod (EDM, consistency models): the scheduler's own sigma grid
        sig = _np(scheduler.sigmas)
        ts = _np(scheduler.timesteps)
        keep = sig > 0
        sig = sig[keep][: len(ts)]
        ts = ts[: len(sig)]
        order = np.argsort(sig)
        sigma, t = sig[order], ts[order]
        lam = log_snr_sigma(sigma)
        notes.append(f"{name} is continuous in sigma; its table is the scheduler's own sigma grid "
                     f"({sigma.min():.4g}..{sigma.max():.4g})")

    t = np.asarray(t, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    if np.any(order != np.arange(len(t))):
        t, lam, sigma = t[order], lam[order], sigma[order]
        alphas = alphas[order] if alphas is not None else None
        betas = betas[order] if betas is not None and len(betas) == len(order) else betas
    return Schedule(
        class_name=name, family=family, prediction_type=pred, sample_space=space,
        timesteps=t, log_snr=np.asarray(lam, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64),
        alphas_cumprod=alphas, betas=betas, num_train_timesteps=int(n_train) if n_train else None,
        clamped_terminal=clamped, shift=shift, notes=tuple(notes),
    )


def accepts(func: Any, name: str) -> bool:
    """Whether ``func`` takes a parameter called ``name`` (or **kwargs)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
