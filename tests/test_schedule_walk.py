"""Every scheduler class diffusers exports either adapts (training table + traced inference) or is refused
with a named reason."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.schedule.adapt import REFUSED
from difflens.schedule.api import analyze_one
from difflens.schedule.sources import scheduler_names, source_from_config

#: Classes that must adapt, whatever else changes: the samplers of SD 1.x/2.x/XL, SD3, Flux, PixArt.
MAINSTREAM = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LCMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler",
              "KDPM2DiscreteScheduler", "EDMEulerScheduler", "UniPCMultistepScheduler",
              "LMSDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


def _walk(name: str) -> dict | str:
    """The analysis of ``name`` from its default config (4 steps), or the refusal message."""
    # flow schedulers with dynamic shifting would need an image size; defaults have none
    try:
        return analyze_one(source_from_config({"_class_name": name}), 4, None, None, None)
    except DifflensError as err:
        return str(err)


@pytest.fixture(scope="module")
def walked() -> dict[str, dict | str]:
    return {name: _walk(name) for name in scheduler_names()}


def test_every_exported_scheduler_adapts_or_is_refused_with_a_reason(walked):
    assert len(walked) >= 40  # diffusers 0.42 exports 49
    for name, out in walked.items():
        if isinstance(out, str):
            assert f"{name} cannot be analyzed: " in out, f"{name}: refused without a named reason: {out}"
            reason = out.split("cannot be analyzed: ", 1)[1]
            assert len(reason) > 20
            continue
        assert out["family"] in ("vp", "sigma", "flow"), name
        lam = np.asarray(out["train"]["log_snr"], dtype=float)
        assert len(lam) >= 10 and not np.any(np.isnan(lam)), name  # consistency models train on 40
        # non-increasing: Wuerstchen clamps alphas_cumprod to [1e-4, 0.9999], flat at both ends
        assert np.all(np.diff(lam)[np.isfinite(np.diff(lam))] <= 0), f"{name}: lambda increases in t"
        assert out["inference"]["evaluations"] >= 4, name
        names = [c["name"] for c in out["checks"]]
        assert names[0] == "monotonic" and "listed_vs_traced" in names


def test_mainstream_samplers_adapt_and_trace_exactly(walked):
    for name in MAINSTREAM:
        out = walked[name]
        assert isinstance(out, dict), f"{name} was refused: {out}"
        checks = {c["name"]: c for c in out["checks"]}
        assert checks["trace_finite"]["ok"], name
        assert checks["listed_vs_traced"]["ok"], f"{name}: {checks['listed_vs_traced']['message']}"
        assert math.isfinite(out["inference"]["log_snr"][1]), name


def test_refusal_table_names_only_exported_classes_and_discrete_ones_are_refused(walked):
    exported = set(walked)
    assert set(REFUSED) <= exported
    for name in ("AmusedScheduler", "VQDiffusionScheduler"):
        assert "discrete (token) diffusion" in walked[name]
    # classes the table does not name but that cannot be built here (torchsde) are refused with the reason
    for name, out in walked.items():
        if isinstance(out, str) and name not in REFUSED:
            assert "needs a package that is not installed" in out, out


def test_families_of_known_classes(walked):
    assert walked["DDIMScheduler"]["family"] == "vp"
    assert walked["EulerDiscreteScheduler"]["family"] == "sigma"
    assert walked["EDMEulerScheduler"]["family"] == "sigma"
    assert walked["FlowMatchEulerDiscreteScheduler"]["family"] == "flow"
    flow_dpm = analyze_one(source_from_config({"_class_name": "DPMSolverMultistepScheduler",
                                               "use_flow_sigmas": True, "flow_shift": 3.0,
                                               "prediction_type": "flow_prediction"}), 6, None, None, None)
    assert flow_dpm["family"] == "flow" and flow_dpm["shift"] == 3.0
    # DPM-Solver with flow sigmas passes int(s * T) to the model while stepping through the continuous s
    check = {c["name"]: c for c in flow_dpm["checks"]}["listed_vs_traced"]
    assert not check["ok"] and "integer timesteps" in check["message"]
    traced_t = np.asarray(flow_dpm["inference"]["traced_timesteps"][1:])
    listed_t = np.asarray(flow_dpm["inference"]["timesteps"][1:])
    assert np.all((traced_t - listed_t >= -1e-3) & (traced_t - listed_t < 1.0))
