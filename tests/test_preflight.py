"""The cheap checks every command runs first (difflens.preflight), the scheduler-config checks and the
analyze config checks, as plain functions: each bad input raises one DifflensError with a fix hint, good
input passes, and no check leaves a file behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflens.errors import DifflensError
from difflens.preflight import (
    DTYPES,
    check_device,
    check_distinct,
    check_dtype,
    check_output_dir,
    check_output_file,
    parse_device,
    preflight,
)


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder in which no file can be created, whoever runs the tests.

    As a normal user a chmod 0555 folder is enough; root ignores permission bits, so then a pseudo file
    system folder (/sys, /proc) is used, after proving that it really refuses a new file."""
    if os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    for candidate in (Path("/sys"), Path("/proc")):
        if not candidate.is_dir():
            continue
        try:
            fd, name = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(name)
    raise AssertionError("running as root and neither /sys nor /proc refuses new files: no way to build an "
                         "unwritable folder here")


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def ro(tmp_path: Path) -> Iterator[Path]:
    path = unwritable_dir(tmp_path)
    yield path
    if path.is_relative_to(tmp_path):
        path.chmod(0o755)


# ----- output files -----------------------------------------------------------------------------------


def test_output_file_accepts_new_nested_and_existing_paths_and_writes_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    before = tree(tmp_path)
    check_output_file(tmp_path / "new.json", "--json")
    check_output_file(tmp_path / "a" / "b" / "new.json", "--json")  # parents are created when written
    check_output_file(existing, "--json")  # replaced atomically when the result is written
    check_output_file(None, "--json")
    assert tree(tmp_path) == before
    assert existing.read_text() == "keep"


def test_output_file_stdout_dash_only_where_allowed(tmp_path: Path) -> None:
    check_output_file("-", "--json", allow_stdout=True)
    with pytest.raises(DifflensError, match=r"--save-stats - \(stdout\) is not supported"):
        check_output_file("-", "--save-stats")
    preflight(files={"--json": Path("-")})  # a typer Path option holding "-" is stdout too


def test_output_file_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DifflensError, match="is a folder, not a file") as err:
        check_output_file(tmp_path, "--json")
    assert err.value.hint and "--json" in err.value.hint


def test_output_file_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    for bad in (tmp_path / "plain" / "out.json", tmp_path / "plain" / "deeper" / "out.json"):
        with pytest.raises(DifflensError, match=r"plain is a file, so no file can be created under it"):
            check_output_file(bad, "--json")
    assert tree(tmp_path) == ["plain"]


def test_output_file_refuses_an_unwritable_folder(ro: Path) -> None:
    before = sorted(os.listdir(ro))
    with pytest.raises(DifflensError, match=r"cannot write in") as err:
        check_output_file(ro / "out.json", "--json")
    assert str(ro) in str(err.value)
    with pytest.raises(DifflensError, match=r"cannot write in"):
        check_output_file(ro / "sub" / "out.json", "--json")  # the folder would be created in `ro`
    assert sorted(os.listdir(ro)) == before


def test_output_file_refuses_empty_path() -> None:
    with pytest.raises(DifflensError, match="empty path"):
        check_output_file("", "--out")


# ----- output folders ---------------------------------------------------------------------------------


def test_output_dir_accepts_new_and_existing_folders(tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "sample.png").write_bytes(b"x")
    before = tree(tmp_path)
    check_output_dir(tmp_path / "exists")  # resumable modes write into an existing folder
    check_output_dir(tmp_path / "new" / "deeper")
    check_output_dir(None)
    assert tree(tmp_path) == before


def test_output_dir_refuses_a_file_and_a_path_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(DifflensError, match="exists and is not a folder"):
        check_output_dir(f)
    with pytest.raises(DifflensError, match="no folder can be created under it"):
        check_output_dir(f / "run")


def test_output_dir_refuses_an_unwritable_folder(ro: Path) -> None:
    with pytest.raises(DifflensError, match=r"--out .*cannot write in this folder"):
        check_output_dir(ro)
    with pytest.raises(DifflensError, match=r"cannot write in"):
        check_output_dir(ro / "run")


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    a = tmp_path / "stats.npz"
    same = tmp_path / "sub" / ".." / "stats.npz"
    with pytest.raises(DifflensError, match="--save-real-stats and --save-fake-stats name the same file"):
        check_distinct({"--save-real-stats": a, "--save-fake-stats": same})
    check_distinct({"--json": "-", "--other": "-", "--save-stats": a, "--x": None, "--y": None})


# ----- dtype and device -------------------------------------------------------------------------------


def test_dtype() -> None:
    for name in (*DTYPES, None):
        check_dtype(name)
    for bad in ("float64", "fp16", "half", "Float32", ""):
        with pytest.raises(DifflensError, match="unknown --dtype"):
            check_dtype(bad)


@pytest.mark.parametrize(("name", "parsed"), [
    (None, ("auto", None)), ("", ("auto", None)), ("auto", ("auto", None)), ("cpu", ("cpu", None)),
    ("cuda", ("cuda", None)), ("cuda:0", ("cuda", 0)), ("cuda:12", ("cuda", 12)), ("mps", ("mps", None)),
])
def test_device_names_that_parse(name: str | None, parsed: tuple[str, int | None]) -> None:
    assert parse_device(name) == parsed


@pytest.mark.parametrize("bad", ["gpu", "tpu", "npu", "cuda:abc", "cuda:", "cuda:-1", "cpu:0", "mps:1",
                                 "CUDA", "cuda0", "cuda:0:1", "0"])
def test_device_names_refused_as_text(bad: str) -> None:
    with pytest.raises(DifflensError, match=r"--device") as err:
        parse_device(bad)
    assert err.value.hint and "cpu" in err.value.hint


def test_cpu_and_auto_never_import_torch_and_bad_names_fail_before_it() -> None:
    code = (
        "import sys\n"
        "from difflens.errors import DifflensError\n"
        "from difflens.preflight import check_device\n"
        "check_device('cpu'); check_device(None); check_device('auto')\n"
        "for bad in ('gpu', 'tpu', 'npu', 'cuda:abc'):\n"
        "    try:\n"
        "        check_device(bad)\n"
        "    except DifflensError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('accepted ' + bad)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_accelerator_device_must_exist() -> None:
    """On a machine without CUDA, cuda and cuda:0 are refused; with CUDA, an index past the last device is.
    Either way one branch asserts a refusal and the other an acceptance."""
    import torch

    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(DifflensError, match="no CUDA device is available"):
                check_device(name)
    else:
        check_device("cuda")
        check_device("cuda:0")
        count = torch.cuda.device_count()
        with pytest.raises(DifflensError, match=f"has {count} CUDA device"):
            check_device(f"cuda:{count}")
    if not torch.backends.mps.is_available():
        with pytest.raises(DifflensError, match=r"no Apple MPS device|MPS exists only on Apple"):
            check_device("mps")


def test_cuda_index_past_the_last_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The branch a GPU machine takes, on any machine: two CUDA devices reported, cuda:2 refused."""
    import torch

    import difflens.preflight as preflight_module

    monkeypatch.setattr(preflight_module, "_may_have_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for ok in ("cuda", "cuda:0", "cuda:1"):
        check_device(ok)
    with pytest.raises(DifflensError, match=r"has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        check_device("cuda:2")


def test_cuda_refused_without_torch_when_no_driver_node_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    import difflens.preflight as preflight_module

    monkeypatch.setattr(preflight_module.sys, "platform", "linux")
    monkeypatch.setattr(preflight_module.os.path, "exists", lambda p: False)
    monkeypatch.setattr(preflight_module.glob, "glob", lambda p: [])
    assert preflight_module._may_have_cuda() is False
    with pytest.raises(DifflensError, match="no GPU driver device found"):
        check_device("cuda:1")
    monkeypatch.setattr(preflight_module.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert preflight_module._may_have_cuda() is True
    monkeypatch.setattr(preflight_module.sys, "platform", "darwin")
    assert preflight_module._may_have_cuda() is False
    monkeypatch.setattr(preflight_module.sys, "platform", "win32")
    assert preflight_module._may_have_cuda() is True


def test_cuda_on_this_machine_in_a_fresh_interpreter() -> None:
    """Here, without a GPU driver, `--device cuda` is refused before torch is imported; on a GPU machine
    the driver nodes exist and torch decides (covered by the tests above)."""
    code = (
        "import sys\n"
        "from difflens.errors import DifflensError\n"
        "from difflens.preflight import _may_have_cuda, check_device\n"
        "may = _may_have_cuda()\n"
        "try:\n"
        "    check_device('cuda')\n"
        "    refused = False\n"
        "except DifflensError:\n"
        "    refused = True\n"
        "print(may, refused, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    may, refused, torch_loaded = proc.stdout.split()
    if may == "False":
        assert (refused, torch_loaded) == ("True", "False")
    else:
        assert torch_loaded == "True"  # asked torch, which alone knows


def test_preflight_checks_paths_before_the_device(tmp_path: Path) -> None:
    """Both are wrong: the path error wins, so it comes without importing torch."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(DifflensError, match="is a file"):
        preflight(files={"--json": tmp_path / "f" / "x.json"}, device="gpu", dtype="float64")
    with pytest.raises(DifflensError, match="--dtype"):
        preflight(files={"--json": tmp_path / "x.json"}, device="gpu", dtype="float64")
    with pytest.raises(DifflensError, match="--device"):
        preflight(folders={"--out": tmp_path / "run"}, device="gpu", dtype="float16")


# ----- scheduler configs ------------------------------------------------------------------------------

_SD15 = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
         "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1}


@pytest.mark.parametrize(("change", "message"), [
    ({"num_train_timesteps": -5}, "num_train_timesteps must be an integer >= 1, got -5"),
    ({"num_train_timesteps": 0}, "num_train_timesteps must be an integer >= 1, got 0"),
    ({"num_train_timesteps": 999.5}, "num_train_timesteps must be an integer"),
    ({"num_train_timesteps": True}, "num_train_timesteps must be an integer"),
    ({"num_train_timesteps": "1000"}, "num_train_timesteps must be an integer"),
    ({"steps_offset": -1}, "steps_offset must be an integer >= 0"),
    ({"beta_end": 2.0}, "beta_end must be a number > 0 and < 1, got 2.0"),
    ({"beta_start": -0.1}, "beta_start must be a number >= 0 and < 1"),
    ({"beta_start": float("nan")}, "beta_start must be a number"),
    ({"beta_start": 0.02}, r"beta_start \(0.02\) is larger than beta_end \(0.012\)"),
    ({"shift": 0.0}, "shift must be a number > 0"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min .* is larger than sigma_max"),
    ({"timestep_spacing": "evenly"}, "timestep_spacing must be one of leading, trailing, linspace"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas has 2 values but num_train_timesteps is 1000"),
    ({"trained_betas": [0.1, 1.5], "num_train_timesteps": 2}, "trained_betas must be a non-empty list"),
])
def test_scheduler_config_fields(change: dict, message: str) -> None:
    from difflens.schedule.config_check import check_scheduler_config

    with pytest.raises(DifflensError, match=message) as err:
        check_scheduler_config({**_SD15, **change}, "x/scheduler_config.json")
    assert "x/scheduler_config.json" in str(err.value) and err.value.hint


def test_scheduler_config_valid_ones_pass() -> None:
    from difflens.schedule.config_check import check_scheduler_config
    from difflens.schedule.sources import list_presets, load_preset

    check_scheduler_config(_SD15, "sd15-like")
    check_scheduler_config({**_SD15, "trained_betas": [0.1, 0.2], "num_train_timesteps": 2,
                            "timestep_spacing": None, "shift": None}, "null fields are left to diffusers")
    presets = list_presets()
    assert len(presets) >= 9
    for name in presets:
        check_scheduler_config(load_preset(name), name)


def test_resolve_spec_checks_a_config_file(tmp_path: Path) -> None:
    import json

    from difflens.schedule.sources import resolve_spec

    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**_SD15, "num_train_timesteps": -5}))
    with pytest.raises(DifflensError, match="num_train_timesteps must be an integer >= 1, got -5"):
        resolve_spec(str(path))


# ----- analyze config files ---------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "analysis.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("[metrics]\nfoo = 1\n", r"unknown key 'foo' in the \[metrics\] table of .*analysis.toml"),
    ("[schedule]\nstep = 3\n", r"unknown key 'step' \(did you mean 'steps'\?\) in the \[schedule\] table"),
    ("[metric]\nsteps = 3\n", r"unknown table \[metric\] \(did you mean \[metrics\]\?\)"),
    ("sed = 1\n", r"unknown key 'sed' \(did you mean 'seed'\?\) in the top level"),
    ("[schedule]\nsteps = 'x'\n", r"steps in the \[schedule\] table of .* must be an integer, got 'x'"),
    ("[metrics]\nper_prompt = 1\n", r"per_prompt .* must be true/false"),
    ("[attention]\nguidance = 'high'\n", r"guidance .* must be a number"),
    ("seed = 1.5\n", r"seed in .* must be an integer"),
    ("model = 'x'\n", r"the model is not read from"),
    ("[metrics\n", r"is not valid TOML"),
])
def test_config_file_errors(tmp_path: Path, text: str, message: str) -> None:
    from difflens.analyze.config import read_config_file

    with pytest.raises(DifflensError, match=message) as err:
        read_config_file(_write(tmp_path, text))
    assert err.value.hint


def test_config_file_that_is_valid(tmp_path: Path) -> None:
    from difflens.analyze.config import read_config_file

    data = read_config_file(_write(tmp_path, (
        'seed = 3\nmodes = ["schedule"]\noffline = true\n[metrics]\nbootstrap = 20\nguidance = 7\n'
        '[schedule]\nsteps = 30\ncompare = ["sd3"]\n[latent]\nframes = 5\n')))
    assert data["seed"] == 3 and data["schedule"] == {"steps": 30, "compare": ["sd3"]}
