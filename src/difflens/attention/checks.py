"""The invariant checks every attention capture gets, whatever drove the denoiser (a generation or one pass
per noise level on a given image): probabilities sum to 1, the fast route equals the explicit softmax,
probabilities x V reproduce each layer's output, every selected layer was called, the token ids match what
the text encoders received, and the maps lie on the latent grid."""

from __future__ import annotations

from typing import Any

#: Relative tolerance of "probabilities x V reproduce the layer output" per model dtype.
OUTPUT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
SUM_TOLERANCE = {"float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}


def check(name: str, ok: bool, message: str, **values: Any) -> dict[str, Any]:
    """One check record: name, ok, message and any measured values."""
    return {"name": name, "ok": bool(ok), "message": message, **values}


def capture_checks(plan: Any, capture: Any, result: Any, dtype_name: str) -> list[dict[str, Any]]:
    """Checks from a finished :class:`~difflens.attention.capture.AttentionCapture` and its aggregate."""
    from difflens.attention.words import check_ids

    checks: list[dict[str, Any]] = []
    sum_tol = SUM_TOLERANCE.get(dtype_name, 1e-5)
    out_tol = OUTPUT_TOLERANCE.get(dtype_name, 1e-2)
    captured = [i for i in capture.info if i.calls]
    missing = [i.name for i in capture.info if not i.calls]
    sum_err = max((i.sum_error or 0.0) for i in captured) if captured else float("nan")
    out_errs = {i.name: i.out_error for i in captured}
    out_err = max((e for e in out_errs.values() if e is not None), default=float("nan"))
    route_err = max((i.route_error for i in captured if i.route_error is not None), default=float("nan"))
    checks.append(check("probabilities_sum_to_one", bool(captured) and sum_err <= sum_tol,
                        f"max |sum over all keys - 1| = {sum_err:.2e} over {len(captured)} layers (every "
                        "captured call on the replay route, each layer's first on the log-sum-exp route; "
                        f"tolerance {sum_tol:g})", value=sum_err, tolerance=sum_tol))
    checks.append(check("fast_route_matches_softmax", bool(captured) and route_err <= sum_tol,
                        f"max |p(token) via one-hot values in SDPA - explicit softmax| = {route_err:.2e} "
                        f"(tolerance {sum_tol:g}; first captured step)", value=route_err, tolerance=sum_tol))
    checks.append(check("output_reproduced", bool(captured) and out_err <= out_tol,
                        f"max relative error of probabilities x V (+ out projection) against each layer's "
                        f"real output: {out_err:.2e} (tolerance {out_tol:g}, {dtype_name}; first captured "
                        "step)",
                        value=out_err, tolerance=out_tol, per_layer=out_errs))
    if missing:
        checks.append(check("layers_captured", False, f"{len(missing)} selected layer(s) were never called: "
                            f"{', '.join(missing[:4])}"))
    ids = check_ids(plan.prompt_tokens.expected_ids, capture.recorded_ids)
    checks.append(check("token_ids_match", ids["ok"],
                        "token ids difflens mapped equal the ids the pipeline's text encoders received "
                        f"({', '.join(ids['encoders'])})", encoders=ids["encoders"]))
    shape_ok = tuple(result.maps.shape[-2:]) == tuple(plan.latent_hw) and (
        result.per_step.shape[0] == 0 or tuple(result.per_step.shape[-2:]) == tuple(plan.latent_hw))
    checks.append(check("map_shape_is_latent_grid", shape_ok,
                        f"maps {list(result.maps.shape[-2:])} vs latent grid {list(plan.latent_hw)} "
                        f"for {plan.height}x{plan.width} pixels"))
    return checks
