"""`difflens schedule`: sources (presets, config files, pipeline folders, hub ids offline), outputs, bad
input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from difflens.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _strict_json(path: Path) -> dict:
    def bad(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture(scope="module")
def eps_zero_snr_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg") / "eps-zero-snr"
    d.mkdir()
    cfg = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "beta_end": 0.012, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
           "prediction_type": "epsilon"}
    path = d / "scheduler_config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_cli_writes_json_csv_and_plots(tmp_path, capsys, eps_zero_snr_config):
    out = tmp_path / "out"
    code, text = _run(["schedule", "sd15", "sd3", "flux", "zero-snr", str(eps_zero_snr_config),
                       "--steps", "8", "--out", str(out)], capsys)
    assert code == 0, text
    assert "terminal_snr" in text and "FAIL" in text and "failing check" in text
    data = _strict_json(out / "schedule.json")  # -inf / NaN must have become null
    assert set(data["schedules"]) == {"sd15", "sd3", "flux", "zero-snr", "eps-zero-snr"}
    assert data["versions"]["diffusers"]
    for entry in data["schedules"].values():
        assert entry["family"] in ("vp", "sigma", "flow")
        assert {"timesteps", "log_snr"} <= set(entry["train"]) and {"timesteps", "log_snr"} <= set(
            entry["inference"])
        assert all({"name", "ok", "message"} == set(c) for c in entry["checks"])
    zs = data["schedules"]["zero-snr"]
    assert zs["train"]["log_snr"][-1] is None and zs["terminal_log_snr_text"] == "-inf"
    assert zs["terminal_snr_zero"] is True
    eps = {c["name"]: c["ok"] for c in data["schedules"]["eps-zero-snr"]["checks"]}
    assert eps["zero_snr_epsilon"] is False and eps["trace_finite"] is False
    assert data["schedules"]["sd15"]["train"]["log_snr"][999] == pytest.approx(-5.364, abs=1e-3)
    for name in ("log_snr.png", "log_snr_vs_t.png", "alphas_cumprod.png", "betas.png", "inference_steps.png"):
        assert (out / name).stat().st_size > 20_000, name
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "sd15.csv").open()))
    train = [r for r in rows if r["part"] == "train"]
    inference = [r for r in rows if r["part"] == "inference"]
    assert len(train) == 1000 and len(inference) == 9  # PNDM's PLMS evaluates its second timestep twice
    assert float(train[0]["log_snr"]) == pytest.approx(7.07, abs=0.005)
    assert inference[0]["timestep"] == "876"  # leading, 8 steps: 7 * 125 + steps_offset 1
    flux_rows = list(csv.DictReader((out / "flux.csv").open()))
    assert flux_rows[999]["log_snr"] == "-inf"  # s = 1 at the noisy end of the table
    assert data["files"]["csv"]["sd15"] == "sd15.csv"


def test_pipeline_folder_and_scheduler_swap(tiny_pipeline_dir, tmp_path, capsys):
    pipe = tiny_pipeline_dir("sd15")
    out = tmp_path / "o"
    code, text = _run(["schedule", str(pipe), str(pipe / "scheduler"), "--scheduler",
                       "EulerDiscreteScheduler", "--spacing", "trailing", "--steps", "4", "--out", str(out)],
                      capsys)
    assert code == 0, text
    data = _strict_json(out / "schedule.json")
    labels = list(data["schedules"])
    assert len(labels) == 2 and labels[0] == f"{pipe.name}@EulerDiscreteScheduler"
    assert labels[1] == f"{pipe.name}@EulerDiscreteScheduler#2"
    e = data["schedules"][labels[0]]
    assert e["source"] == "pipeline" and e["pipeline_class"] == "StableDiffusionPipeline"
    assert e["class"] == "EulerDiscreteScheduler" and e["original_class"] == "PNDMScheduler"
    assert e["inference"]["timesteps"][0] == 999  # --spacing trailing reached the swapped class
    assert any("sampler swapped" in n for n in e["notes"])


def test_flux_image_size_changes_the_shift(tmp_path, capsys):
    code, text = _run(["schedule", "flux", "--steps", "4", "--height", "512", "--width", "768"], capsys)
    assert code == 0, text
    assert "image_seq_len" in text and "flux" in text
    assert list(tmp_path.iterdir()) == []  # without --out nothing is written
    code, text = _run(["schedule", "flux", "--steps", "4", "--height", "512", "--width", "768", "--out",
                       str(tmp_path)], capsys)
    flux = _strict_json(tmp_path / "schedule.json")["schedules"]["flux"]
    assert flux["image_seq_len"] == 1536 and flux["image_size"] == [512, 768]  # (512/16) * (768/16)


BAD = [
    (["sd16"], "unknown schedule preset 'sd16'",
     "cosine, flux, linear, scaled-linear, sd15, sd21, sd3, sdxl, zero-snr"),
    (["sd15", "--steps", "1001"], "larger than PNDMScheduler's 1000 training timesteps", "at most 1000"),
    (["sd15", "--scheduler", "RePaintScheduler"], "RePaintScheduler cannot be analyzed", "undo_step"),
    (["sd15@VQDiffusionScheduler"], "VQDiffusionScheduler cannot be analyzed", "discrete"),
    (["sd15", "--scheduler", "EulerDiscrete2"], "unknown scheduler class", "EulerDiscreteScheduler"),
    (["sd15", "--spacing", "middle"], "unknown --spacing", "trailing"),
    (["./no/such/dir"], "does not exist", "preset"),
]


@pytest.mark.parametrize(("argv", "message", "hint"), BAD)
def test_bad_input_is_one_clear_line(argv, message, hint, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = _run(["schedule", *argv, "--out", str(out)], capsys)
    assert code == 2
    assert message in text and hint in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not out.exists()


def test_unreadable_config_and_folder_without_config(tmp_path, capsys):
    bad = tmp_path / "scheduler_config.json"
    bad.write_text("{not json")
    code, text = _run(["schedule", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "cannot read scheduler config" in text and "Traceback" not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = _run(["schedule", str(empty), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "holds no scheduler config" in text
    assert not (tmp_path / "o").exists()


def test_hub_id_offline_not_cached(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = _run(["schedule", "difflens-test/not-a-real-model", "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "local cache" in text and "offline" in text and "Traceback" not in text


def test_out_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, text = _run(["schedule", "sd15", "--out", str(f)], capsys)
    assert code == 2 and "is not a folder" in text and f.read_text() == "x"


def test_unknown_flag_is_a_usage_error(capsys):
    code, _ = _run(["schedule", "sd15", "--stepz", "3"], capsys)
    assert code == 2


def test_json_null_means_minus_inf_at_the_noisy_end(tmp_path):
    from difflens.schedule.api import analyze_schedules, write_outputs

    result = analyze_schedules(["sd3"], steps=3)
    assert result["schedules"]["sd3"]["train"]["log_snr"][-1] == -math.inf
    write_outputs(result, tmp_path)
    data = _strict_json(tmp_path / "schedule.json")
    assert data["schedules"]["sd3"]["train"]["log_snr"][-1] is None
    assert "null" in data["notes"]["non_finite"] and "-inf" in data["notes"]["non_finite"]


def test_hub_id_offline_from_the_local_cache(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--difflens-test--cached-model"
    snap = repo / "snapshots" / commit
    (snap / "scheduler").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snap / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "num_train_timesteps": 1000}))
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "o"
    code, text = _run(["schedule", "difflens-test/cached-model", "--steps", "4", "--out", str(out)], capsys)
    assert code == 0, text
    entry = _strict_json(out / "schedule.json")["schedules"]["difflens-test/cached-model"]
    assert entry["source"] == "hub" and entry["pipeline_class"] == "StableDiffusion3Pipeline"
    assert entry["shift"] == 3.0 and entry["family"] == "flow"
