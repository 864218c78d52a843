"""Named checks on an adapted schedule and its traced inference. Each returns ``Check(name, ok, message)``.

Thresholds (in log-SNR lambda, natural log):

- terminal SNR counts as zero when lambda_T = -inf, or when a scheduler clamped it to 2^-24 (lambda -16.6), or
  when lambda_T <= -10 (signal below 0.7% of the noise); SD's -5.36 (sqrt(a_T) = 0.068) fails, as Lin et al.
  (2024) show it should.
- the first inference step is "far below" the training maximum when its lambda is more than 0.5 above lambda_T
  (the SNR the model is told is 1.65x the true one) and above -10: leading spacing with 4 steps (t = 751)
  fails, leading with 50 steps (t = 981, 0.26 above) passes.
- listed vs traced: a model evaluation whose sample's lambda differs from the lambda of the timestep it is
  told by more than 1e-3 + 2e-4 |lambda| (float32 round-off of the trace stays far below; DDIM's off-by-one
  under linspace is about 0.01 at t = 958) and whose equivalent timestep is more than half a table step from
  the listed one (rounding a continuous noise level to the nearest integer timestep passes; DDIM's
  prev_t = t - T // n and truncation by a whole step fail).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from difflens.schedule.adapt import Schedule
from difflens.schedule.trace import Trace

ZERO_SNR_LAMBDA = -10.0
FIRST_STEP_GAP = 0.5
LIN_ET_AL = ("Lin et al. 2024, 'Common Diffusion Noise Schedules and Sample Steps are Flawed'")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _f(x: float, digits: int = 2) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:+.{digits}f}"


def _t(x: float) -> str:
    return f"{x:g}" if abs(x - round(x)) > 1e-6 else str(round(x))


def terminal_is_zero(s: Schedule) -> bool:
    lam_t = float(s.log_snr[-1])
    return s.clamped_terminal or lam_t == -math.inf or lam_t <= ZERO_SNR_LAMBDA


def check_monotonic(s: Schedule) -> Check:
    """Training lambda strictly decreasing in t (alphas_cumprod decreasing where defined)."""
    lam = s.log_snr
    d = np.diff(lam)
    bad = np.flatnonzero(~(d < 0) & ~(np.isneginf(lam[1:]) & np.isneginf(lam[:-1])))
    what = "alphas_cumprod and log-SNR" if s.alphas_cumprod is not None else "log-SNR"
    if len(bad) == 0:
        return Check("monotonic", True, f"{what} strictly decrease over the {len(lam)} training timesteps")
    i = int(bad[0])
    return Check("monotonic", False,
                 f"{what} not strictly decreasing: lambda(t={_t(s.timesteps[i])}) = {_f(lam[i], 4)} then "
                 f"lambda(t={_t(s.timesteps[i + 1])}) = {_f(lam[i + 1], 4)} ({len(bad)} such places)")


def check_train_range(s: Schedule) -> Check:
    lam = s.log_snr
    ok = not np.any(np.isnan(lam))
    msg = (f"training log-SNR from {_f(lam[0])} (t={_t(s.timesteps[0])}) to {_f(lam[-1])} "
           f"(t={_t(s.timesteps[-1])})")
    if s.alphas_cumprod is not None:
        msg += f"; sqrt(alphas_cumprod[T]) = {math.sqrt(max(float(s.alphas_cumprod[-1]), 0.0)):.4f}"
    if not ok:
        msg += "; the table holds NaN"
    return Check("train_log_snr_range", ok, msg)


def check_inference_range(s: Schedule, tr: Trace) -> Check:
    lam = tr.log_snr
    finite = lam[~np.isnan(lam)]
    if len(finite) == 0:
        return Check("inference_log_snr_range", False, "no finite noise level was visited")
    lo, hi = float(np.min(finite)), float(np.max(finite))
    tlo, thi = float(np.min(s.log_snr)), float(np.max(s.log_snr))
    outside = finite[(finite < tlo - 1e-3) | (finite > thi + 1e-3)]
    msg = (f"{tr.evaluations} model evaluations visit log-SNR {_f(hi)} .. {_f(lo)}; the last step returns "
           f"{_f(tr.final_log_snr)}")
    if len(outside):
        return Check("inference_log_snr_range", False,
                     msg + f"; {len(outside)} visited level(s) lie outside the training range [{_f(tlo)}, "
                           f"{_f(thi)}]: the model is asked about noise levels it never trained on")
    return Check("inference_log_snr_range", True, msg + " (inside the training range)")


def check_terminal_snr(s: Schedule) -> Check:
    lam_t = float(s.log_snr[-1])
    if s.clamped_terminal:
        return Check("terminal_snr", True, "zero terminal SNR intended; clamped to 2^-24, lambda_T = "
                                           f"{_f(lam_t)} (see zero_snr_clamp)")
    if terminal_is_zero(s):
        return Check("terminal_snr", True, f"terminal SNR is zero or negligible: lambda_T = {_f(lam_t)}")
    leak = math.exp(lam_t / 2.0)
    if s.family == "vp" or (s.family == "sigma" and s.alphas_cumprod is not None):
        a_t = float(s.alphas_cumprod[-1]) if s.alphas_cumprod is not None else 1 / (1 + math.exp(-lam_t))
        fix = ("set rescale_betas_zero_snr=True (with prediction_type='v_prediction' and "
               "timestep_spacing='trailing')")
        detail = f"sqrt(alphas_cumprod[T]) = {math.sqrt(a_t):.4f}"
    else:
        fix = "raise sigma_max" if s.family == "sigma" else "extend the schedule to s = 1"
        detail = f"signal/noise = {leak:.4f}"
    return Check("terminal_snr", False,
                 f"terminal SNR is not zero: lambda_T = {_f(lam_t)}, {detail}; training never shows pure "
                 f"noise, but sampling starts from it ({LIN_ET_AL}); fix: {fix}")


def check_zero_snr_epsilon(s: Schedule) -> Check:
    """Fails for exactly zero (or clamped-zero) terminal SNR with epsilon prediction; a tiny non-zero SNR
    (linear DDPM's -10.1, cosine's) is ill-conditioned for epsilon but not undefined, so it passes."""
    if not (s.clamped_terminal or float(s.log_snr[-1]) == -math.inf):
        return Check("zero_snr_epsilon", True,
                     "terminal SNR is not exactly zero, so epsilon prediction is well-posed")
    if s.prediction_type == "epsilon":
        return Check("zero_snr_epsilon", False,
                     "zero terminal SNR with epsilon prediction: at t = T the input is pure noise, so "
                     "predicting the noise is trivial and x0 = (x - sqrt(1-a) eps) / sqrt(a) divides by "
                     f"zero; use prediction_type='v_prediction' ({LIN_ET_AL}, section 3.2)")
    return Check("zero_snr_epsilon", True,
                 f"zero terminal SNR with {s.prediction_type} prediction (well-posed at t = T)")


def check_first_step(s: Schedule, tr: Trace) -> Check:
    lam_first = float(tr.log_snr[0]) if len(tr.log_snr) else math.nan
    t_first = float(tr.timesteps[0]) if len(tr.timesteps) else math.nan
    lam_max_noise = float(s.log_snr[-1])
    inverse = len(tr.timesteps) > 1 and tr.timesteps[-1] > tr.timesteps[0]
    if inverse:
        return Check("first_step", True, f"inversion: sampling runs from t={_t(t_first)} towards noise")
    if lam_first == lam_max_noise or (math.isinf(lam_first) and math.isinf(lam_max_noise)):
        gap = 0.0
    else:
        gap = lam_first - lam_max_noise
    msg = (f"first step at t={_t(t_first)} (lambda {_f(lam_first)}); training maximum "
           f"t={_t(s.timesteps[-1])} (lambda {_f(lam_max_noise)})")
    if not math.isnan(gap) and gap <= FIRST_STEP_GAP:
        return Check("first_step", True, msg + f"; {gap:.2f} apart")
    if lam_first <= ZERO_SNR_LAMBDA:
        return Check("first_step", True, msg + "; the first step is already at negligible SNR")
    return Check("first_step", False,
                 msg + f"; {_f(gap)} apart: sampling starts from pure noise but tells the model the noise "
                       f"is weaker (leading spacing); use timestep_spacing='trailing' ({LIN_ET_AL}, section "
                       "3.3)")


def check_listed_vs_traced(s: Schedule, tr: Trace) -> Check:
    listed = s.log_snr_at(tr.timesteps)
    visited = tr.log_snr
    both_inf = np.isinf(listed) & np.isinf(visited) & (np.sign(listed) == np.sign(visited))
    with np.errstate(invalid="ignore"):
        diff = np.where(both_inf, 0.0, visited - listed)
    tol = 1e-3 + 2e-4 * np.where(np.isfinite(listed), np.abs(listed), 0.0)
    comparable = ~np.isnan(listed) & ~np.isnan(visited)
    if not np.any(comparable):
        return Check("listed_vs_traced", True,
                     "listed timesteps are not on the training table's scale; comparison skipped")
    off_lambda = comparable & ~(np.abs(diff) <= tol)
    # in time: more than half a table step away from the listed timestep (rounding to the table is fine)
    traced_t = s.timestep_at_log_snr(visited)
    spacing = np.abs(np.diff(s.timesteps))
    mids = (s.timesteps[1:] + s.timesteps[:-1]) / 2.0
    local = np.interp(tr.timesteps, mids, spacing) if len(spacing) else np.ones_like(tr.timesteps)
    with np.errstate(invalid="ignore"):
        off_time = ~np.isfinite(traced_t) | (np.abs(traced_t - tr.timesteps) > 0.5 * local + 1e-6)
    bad = np.flatnonzero(off_lambda & off_time)
    if len(bad) == 0:
        return Check("listed_vs_traced", True,
                     f"each of the {tr.evaluations} model evaluations sees the noise level of the timestep "
                     "it is told")
    i = int(bad[0])
    equiv = s.timestep_at_log_snr(np.asarray([visited[i]]))[0]
    at = f"t={_t(equiv)}" if np.isfinite(equiv) else f"lambda {_f(visited[i])}"
    prev = f" after step() at t={_t(tr.timesteps[i - 1])}" if i > 0 else ""
    if s.class_name.startswith("DDIM") and not s.class_name.startswith("DDIMInverse"):
        why = "DDIM's step() uses prev_t = t - T // n"
    elif np.all(np.abs(tr.timesteps - np.round(tr.timesteps)) < 1e-6) and np.all(
            np.abs(traced_t[bad] - tr.timesteps[bad]) <= 1.0 + 1e-6):
        why = ("the scheduler passes integer timesteps (rounded or truncated) while it steps through "
               "continuous noise levels")
    else:
        why = "step() does not land on the noise level of the next listed timestep"
    return Check("listed_vs_traced", False,
                 f"{len(bad)} of {tr.evaluations} model evaluations see a different noise level than the "
                 f"listed timestep: the sample{prev} is at {at} (lambda {_f(visited[i], 3)}), but the model "
                 f"is told t={_t(tr.timesteps[i])} (lambda {_f(listed[i], 3)}); {why}")


def check_zero_snr_clamp(s: Schedule) -> Check:
    if s.clamped_terminal:
        return Check("zero_snr_clamp", True,
                     f"{s.class_name} clamps alphas_cumprod[T] from 0 to 2^-24 under "
                     f"rescale_betas_zero_snr: lambda_T = {_f(float(s.log_snr[-1]))} (sigma_max = "
                     f"{float(s.sigma[-1]):.0f}) stands for zero SNR")
    return Check("zero_snr_clamp", True, "no zero-SNR clamp")


def check_trace_finite(tr: Trace) -> Check:
    bad = np.flatnonzero(np.isnan(tr.log_snr))
    if len(bad) == 0 and not math.isnan(tr.final_log_snr):
        return Check("trace_finite", True, "every traced step returned a finite sample")
    i = int(bad[0]) - 1 if len(bad) else len(tr.timesteps) - 1
    return Check("trace_finite", False,
                 f"step() at t={_t(tr.timesteps[max(i, 0)])} returned NaN/inf even with an exact model "
                 "output: sampling diverges (typically zero terminal SNR with epsilon prediction)")


def run_checks(s: Schedule, tr: Trace) -> list[Check]:
    """All checks, in a fixed order."""
    return [
        check_monotonic(s),
        check_train_range(s),
        check_inference_range(s, tr),
        check_terminal_snr(s),
        check_zero_snr_epsilon(s),
        check_first_step(s, tr),
        check_listed_vs_traced(s, tr),
        check_zero_snr_clamp(s),
        check_trace_finite(tr),
    ]
