"""Schedule mode against numbers from outside the project (Lin et al. 2024; diffusers' own tables; SD3/Flux
shift formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difflens.schedule.adapt import adapt, dynamic_shift_mu, log_snr_flow
from difflens.schedule.api import analyze_one, analyze_schedules
from difflens.schedule.sources import build_scheduler, resolve_spec, source_from_config
from difflens.schedule.trace import trace


def _checks(entry: dict) -> dict[str, dict]:
    return {c["name"]: c for c in entry["checks"]}


def _scheduler(spec: str, spacing: str | None = None):
    sched, _ = build_scheduler(resolve_spec(spec), spacing)
    return sched


def test_sd_scaled_linear_matches_lin_et_al():
    # Lin et al. 2024, section 3.1: SD's schedule ends at sqrt(alphas_cumprod) = 0.0683, lambda -5.36
    for preset in ("scaled-linear", "sd15", "sd21", "sdxl"):
        s = adapt(_scheduler(preset))
        assert s.log_snr[0] == pytest.approx(7.07, abs=0.005)
        assert s.log_snr[999] == pytest.approx(-5.36, abs=0.005)
        assert math.sqrt(s.alphas_cumprod[-1]) == pytest.approx(0.0683, abs=5e-5)
        # DPM-Solver's lambda_t is half of ours
    dpm = build_scheduler(source_from_config({"_class_name": "DPMSolverMultistepScheduler",
                                              "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                              "beta_end": 0.012}))[0]
    lam = adapt(dpm).log_snr
    np.testing.assert_allclose(2 * dpm.lambda_t.double().numpy(), lam, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("spacing", "steps", "first"), [("leading", 50, 981), ("trailing", 50, 999),
                                                          ("leading", 4, 751), ("linspace", 50, 999)])
def test_spacing_first_timestep(spacing, steps, first):
    sched = _scheduler("scaled-linear", spacing)
    tr = trace(sched, adapt(sched), steps)
    assert tr.timesteps[0] == first
    assert tr.evaluations == steps


def test_first_step_check_flags_leading_with_few_steps():
    r4 = analyze_schedules(["scaled-linear"], steps=4, spacing="leading")["schedules"]["scaled-linear"]
    c = _checks(r4)["first_step"]
    assert not c["ok"] and "t=751" in c["message"] and "trailing" in c["message"]
    r50 = analyze_schedules(["scaled-linear"], steps=50, spacing="leading")["schedules"]["scaled-linear"]
    assert _checks(r50)["first_step"]["ok"]
    assert not _checks(r50)["terminal_snr"]["ok"]
    assert "0.0683" in _checks(r50)["terminal_snr"]["message"]
    assert "rescale_betas_zero_snr" in _checks(r50)["terminal_snr"]["message"]


def test_zero_snr_rescaling_and_euler_clamp():
    res = analyze_schedules(["zero-snr", "zero-snr@EulerDiscreteScheduler"], steps=10)["schedules"]
    ddim, euler = res["zero-snr"], res["zero-snr@EulerDiscreteScheduler"]
    assert ddim["terminal_log_snr"] == -math.inf and ddim["terminal_snr_zero"]
    assert ddim["train"]["alphas_cumprod"][-1] == 0.0
    assert _checks(ddim)["terminal_snr"]["ok"]
    # Euler clamps alphas_cumprod[-1] to 2^-24: lambda = ln(2^-24 / (1 - 2^-24)) = -16.64
    assert euler["terminal_log_snr"] == pytest.approx(-16.64, abs=0.01)
    assert euler["terminal_clamped"] and not euler["terminal_snr_zero"]
    clamp = _checks(euler)["zero_snr_clamp"]
    assert "2^-24" in clamp["message"] and "-16.64" in clamp["message"]
    # trailing spacing starts from the (clamped) pure-noise level
    assert euler["inference"]["timesteps"][0] == 999
    assert euler["inference"]["log_snr"][0] == pytest.approx(-16.64, abs=0.01)


def test_zero_snr_with_epsilon_prediction_is_flagged(tmp_path):
    cfg = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "beta_end": 0.012, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
           "prediction_type": "epsilon"}
    entry = analyze_one(source_from_config(cfg, "eps-zero-snr"), 10, None, None, None)
    checks = _checks(entry)
    assert not checks["zero_snr_epsilon"]["ok"] and "v_prediction" in checks["zero_snr_epsilon"]["message"]
    # DDIM divides by sqrt(alphas_cumprod[999]) = 0: the first step already diverges
    assert not checks["trace_finite"]["ok"]
    assert math.isnan(entry["inference"]["log_snr"][1])


def test_flow_shift_moves_lambda_by_minus_two_ln_s():
    base = adapt(build_scheduler(source_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}))[0])
    for shift in (3.0, 0.5):
        sched = build_scheduler(source_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                    "shift": shift}))[0]
        s = adapt(sched)
        ok = np.isfinite(base.log_snr)
        np.testing.assert_allclose(s.log_snr[ok] - base.log_snr[ok], -2 * math.log(shift), atol=1e-9)
        # the adapter's float64 table is diffusers' own (float32) sigma table
        np.testing.assert_allclose(np.sort(s.sigma), np.sort(sched.sigmas.double().numpy()), rtol=2e-6)
    # SD3: the traced inference visits exactly the scheduler's shifted sigmas
    sd3 = _scheduler("sd3")
    tr = trace(sd3, adapt(sd3), 8)
    sig = sd3.sigmas.double().numpy()
    sd3.set_timesteps(8)
    np.testing.assert_allclose(tr.log_snr[1:], log_snr_flow(sd3.sigmas.double().numpy()[1:8]), atol=1e-3)
    assert tr.log_snr[0] == -math.inf and sig[0] == 1.0


def test_flux_dynamic_shift_from_image_size():
    assert dynamic_shift_mu(4096) == pytest.approx(1.15)
    assert dynamic_shift_mu(256) == pytest.approx(0.5)
    res = analyze_schedules(["flux"], steps=4, height=512, width=512)["schedules"]["flux"]
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (1024 - 256)  # 512x512 -> (512/16)^2 = 1024 image tokens
    assert res["image_seq_len"] == 1024 and res["mu"] == pytest.approx(mu)
    assert res["shift"] == pytest.approx(math.exp(mu))
    # FluxPipeline's grid: sigmas = linspace(1, 1/n, n) shifted by e^mu; lambda = 2 ln((1-u)/u) - 2 mu
    u = np.linspace(1.0, 0.25, 4)[1:]
    expected = 2 * (np.log1p(-u) - np.log(u)) - 2 * mu
    np.testing.assert_allclose(res["inference"]["log_snr"][1:], expected, atol=1e-3)
    big = analyze_schedules(["flux"], steps=4, height=1024, width=1024)["schedules"]["flux"]
    np.testing.assert_allclose(np.asarray(big["inference"]["log_snr"][1:]) - res["inference"]["log_snr"][1:],
                               -2 * (1.15 - mu), atol=1e-3)


def test_ddim_linspace_traced_steps_differ_from_timesteps():
    res = analyze_schedules(["scaled-linear"], steps=50, spacing="linspace")["schedules"]["scaled-linear"]
    inf = res["inference"]
    assert inf["timesteps"][:3] == [999, 979, 958]
    # step() from t=979 uses prev_t = 979 - 1000 // 50 = 959, while the next listed timestep is 958
    assert inf["traced_timesteps"][2] == pytest.approx(959, abs=0.05)
    c = _checks(res)["listed_vs_traced"]
    assert not c["ok"]
    assert "t=959" in c["message"] and "t=958" in c["message"] and "prev_t = t - T // n" in c["message"]
    lead = analyze_schedules(["scaled-linear"], steps=50, spacing="leading")["schedules"]["scaled-linear"]
    assert _checks(lead)["listed_vs_traced"]["ok"]


def test_heun_double_evaluations_and_ancestral_trace_are_exact():
    res = analyze_schedules(["scaled-linear@HeunDiscreteScheduler", "scaled-linear@EulerAncestralDiscrete"],
                            steps=6, spacing="trailing")["schedules"]
    heun = res["scaled-linear@HeunDiscreteScheduler"]
    assert heun["inference"]["evaluations"] == 2 * 6 - 1
    assert _checks(heun)["listed_vs_traced"]["ok"]
    anc = res["scaled-linear@EulerAncestralDiscreteScheduler"]
    assert anc["inference"]["stochastic"]
    lam, listed = np.asarray(anc["inference"]["log_snr"]), np.asarray(anc["inference"]["listed_log_snr"])
    np.testing.assert_allclose(lam, listed, atol=1e-3)


def test_steps_larger_than_training_timesteps_is_an_error():
    from difflens.errors import DifflensError

    with pytest.raises(DifflensError, match=r"larger than .* 1000 training timesteps"):
        analyze_schedules(["sd15"], steps=1001)
