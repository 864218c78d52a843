"""Bad output paths, devices, dtypes and config files through the real CLI (`difflens.cli.main`): every
case exits 2 with exactly one line on stderr, no traceback, nothing on stdout and nothing written, and (in
a fresh interpreter) without importing torch, diffusers or transformers. The inputs named in these
commands do not exist: the checks come first, before any input is read or any model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli_helpers import run_cli as _run

HEAVY = ("torch", "diffusers", "transformers")


def unwritable_dir(root: Path) -> Path:
    """A folder in which no file can be created, whoever runs the tests (as in test_preflight.py): a
    chmod 0555 folder for a normal user; for root, who ignores permission bits, /sys or /proc, after
    proving that it refuses a new file."""
    if os.geteuid() != 0:
        ro = root / "read-only"
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


class Dirs:
    """A scratch folder with a plain file, an existing folder and an unwritable folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plain = root / "plain.txt"
        self.plain.write_text("not a folder")
        self.folder = root / "existing"
        self.folder.mkdir()
        self.ro = unwritable_dir(root)


Case = Callable[[Dirs], list[str]]

_METRICS = ["metrics", "--real", "nope-real", "--fake", "nope-fake"]
_MODEL = "nope/model"
_GENERATE = ["generate", "--model", _MODEL, "--prompts", "p.txt", "--num-samples", "2"]

#: (id, argv builder, words the one error line must contain); each case has exactly one thing wrong.
CASES: list[tuple[str, Case, tuple[str, ...]]] = [
    ("metrics-json-readonly", lambda d: [*_METRICS, "--json", str(d.ro / "m.json")],
     ("--json", "cannot write")),
    ("metrics-json-under-file", lambda d: [*_METRICS, "--json", str(d.plain / "m.json")], ("is a file",)),
    ("metrics-json-folder", lambda d: [*_METRICS, "--json", str(d.folder)], ("is a folder",)),
    ("metrics-save-stats", lambda d: [*_METRICS, "--save-stats", str(d.plain / "s.npz")], ("--save-stats",)),
    ("metrics-save-real", lambda d: [*_METRICS, "--save-real-stats", str(d.ro / "s.npz")],
     ("--save-real-stats", "cannot write")),
    ("metrics-save-fake", lambda d: [*_METRICS, "--save-fake-stats", str(d.folder)], ("is a folder",)),
    ("metrics-same-file", lambda d: [*_METRICS, "--json", str(d.root / "x"), "--save-stats",
                                     str(d.root / "x")], ("same file",)),
    ("metrics-samples-dir", lambda d: [*_METRICS, "--samples-dir", str(d.plain)], ("--samples-dir",)),
    ("metrics-device-gpu", lambda d: [*_METRICS, "--device", "gpu"], ("unknown --device 'gpu'",)),
    ("metrics-device-tpu", lambda d: [*_METRICS, "--device", "tpu"], ("unknown --device 'tpu'",)),
    ("metrics-device-npu", lambda d: [*_METRICS, "--device", "npu"], ("unknown --device 'npu'",)),
    ("metrics-device-cuda-abc", lambda d: [*_METRICS, "--device", "cuda:abc"], ("'cuda:abc'",)),
    ("metrics-dtype", lambda d: [*_METRICS, "--dtype", "float64"], ("unknown --dtype 'float64'",)),
    ("generate-out-file", lambda d: [*_GENERATE, "--out", str(d.plain)], ("not a folder",)),
    ("generate-out-readonly", lambda d: [*_GENERATE, "--out", str(d.ro / "run")], ("cannot write",)),
    ("generate-device", lambda d: [*_GENERATE, "--out", str(d.root / "run"), "--device", "npu"],
     ("--device",)),
    ("generate-dtype", lambda d: [*_GENERATE, "--out", str(d.root / "run"), "--dtype", "half"], ("--dtype",)),
    ("stats-out-folder", lambda d: ["stats", "build", "--real", "nope", "--out", str(d.folder)],
     ("is a folder",)),
    ("stats-out-readonly", lambda d: ["stats", "build", "--real", "nope", "--out", str(d.ro / "s.npz")],
     ("cannot write",)),
    ("stats-device", lambda d: ["stats", "build", "--real", "nope", "--out", str(d.root / "s.npz"),
                                "--device", "gpu"], ("--device",)),
    ("schedule-out-readonly", lambda d: ["schedule", "sd15", "--out", str(d.ro)], ("cannot write",)),
    ("schedule-out-under-readonly", lambda d: ["schedule", "sd15", "--out", str(d.ro / "s")],
     ("cannot write",)),
    ("schedule-out-file", lambda d: ["schedule", "sd15", "--out", str(d.plain)], ("not a folder",)),
    ("attention-out", lambda d: ["attention", "--model", _MODEL, "--prompt", "a cat", "--out",
                                 str(d.plain / "a")], ("is a file",)),
    ("attention-device", lambda d: ["attention", "--model", _MODEL, "--prompt", "a cat", "--out",
                                    str(d.root / "a"), "--device", "tpu"], ("--device",)),
    ("latent-encode-out", lambda d: ["latent", "encode", "img.png", "--model", _MODEL, "--out",
                                     str(d.folder)], ("is a folder",)),
    ("latent-encode-report", lambda d: ["latent", "encode", "img.png", "--model", _MODEL, "--out",
                                        str(d.root / "z.npz"), "--report", str(d.plain / "r.json")],
     ("--report",)),
    ("latent-interpolate", lambda d: ["latent", "interpolate", "--model", _MODEL, "--prompt", "a", "--out",
                                      str(d.ro / "i")], ("cannot write",)),
    ("latent-direction", lambda d: ["latent", "direction", "--model", _MODEL, "--out", str(d.plain),
                                    "--positive", "a", "--negative", "b", "--prompt", "c"],
     ("not a folder",)),
    ("latent-ood", lambda d: ["latent", "ood", "--model", _MODEL, "--reference", "r", "--test", "t", "--out",
                              str(d.root / "o"), "--dtype", "fp8"], ("--dtype",)),
    ("analyze-out", lambda d: ["analyze", "--model", _MODEL, "--modes", "schedule", "--out", str(d.plain)],
     ("not a folder",)),
    ("analyze-out-readonly", lambda d: ["analyze", "--model", _MODEL, "--modes", "schedule", "--out",
                                        str(d.ro / "run")], ("cannot write",)),
    ("analyze-device", lambda d: ["analyze", "--model", _MODEL, "--modes", "schedule", "--out",
                                  str(d.root / "run"), "--device", "gpu"], ("--device",)),
    ("report-out-folder", lambda d: ["report", str(d.root / "run"), "--out", str(d.folder)],
     ("is a folder",)),
    ("report-out-readonly", lambda d: ["report", str(d.root / "run"), "--out", str(d.ro / "r.html")],
     ("cannot write",)),
    ("demo-out", lambda d: ["demo", "--out", str(d.plain / "demo")], ("is a file",)),
]



def assert_one_line_error(code: int, out: str, err: str, words: tuple[str, ...]) -> None:
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Fix: " in lines[0], lines[0]
    assert out == ""
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[Dirs]:
    d = Dirs(tmp_path)
    yield d
    if d.ro.is_relative_to(tmp_path):
        d.ro.chmod(0o755)


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_output_device_dtype(build: Case, words: tuple[str, ...], dirs: Dirs,
                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(dirs.root)  # relative outputs (if any) would land here and be seen
    before, before_ro = tree(dirs.root), sorted(p.name for p in dirs.ro.iterdir())
    code, out, err = _run(build(dirs), capsys)
    assert_one_line_error(code, out, err, words)
    assert tree(dirs.root) == before
    assert sorted(p.name for p in dirs.ro.iterdir()) == before_ro


def test_every_case_fails_before_torch_is_imported(tmp_path: Path) -> None:
    """All cases above in one fresh interpreter: none of them imports torch, diffusers or transformers."""
    d = Dirs(tmp_path)
    argvs = [build(d) for _, build, _ in CASES]
    code = f"""
import contextlib, io, json, sys
from difflens.cli import main
results = []
for argv in {argvs!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            rc = 0
        except SystemExit as exc:
            rc = exc.code
    results.append([rc, err.getvalue()])
print(json.dumps({{"results": results, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          check=False, cwd=tmp_path)
    if d.ro.is_relative_to(tmp_path):
        d.ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    for (name, _, _), (rc, err) in zip(CASES, data["results"], strict=True):
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (name, rc, err)
    assert data["heavy"] == []


def test_cuda_without_a_gpu_or_past_the_last_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    device = "cuda:0" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    words = ("no CUDA device",) if not torch.cuda.is_available() else ("CUDA device(s)",)
    code, out, err = _run([*_METRICS, "--device", device, "--json", str(tmp_path / "m.json")], capsys)
    assert_one_line_error(code, out, err, words)
    assert list(tmp_path.iterdir()) == []


# ----- analyze config files and scheduler configs: checked before any mode runs ------------------------


@pytest.mark.parametrize(("toml", "words"), [
    ("[metrics]\nfoo = 1\n", ("unknown key 'foo' in the [metrics] table",)),
    ("[schedule]\nsteps = 'ten'\n", ("steps in the [schedule] table", "must be an integer")),
    ("[sched]\nsteps = 3\n", ("unknown table [sched]",)),
    ("device = 'gpu'\n", ("unknown --device 'gpu'",)),
    ("dtype = 'float64'\n", ("unknown --dtype 'float64'",)),
])
def test_analyze_config_errors_write_nothing(toml: str, words: tuple[str, ...], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "analysis.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    code, stdout, err = _run(["analyze", "--model", "sd15", "--modes", "schedule", "--config", str(config),
                              "--out", str(out)], capsys)
    assert_one_line_error(code, stdout, err, words)
    assert not out.exists()  # no run folder, no run.json, no report.html
    assert tree(tmp_path) == ["analysis.toml"]


def test_analyze_metrics_mode_without_real_is_refused_up_front(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, err = _run(["analyze", "--model", "sd15", "--modes", "schedule,metrics", "--out", str(out)],
                             capsys)
    assert_one_line_error(code, stdout, err, ("metrics mode needs reference images",))
    assert not out.exists()


def test_schedule_config_with_negative_timesteps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
                                  "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": -5}))
    out = tmp_path / "out"
    code, stdout, err = _run(["schedule", str(config), "--out", str(out)], capsys)
    assert_one_line_error(code, stdout, err, ("num_train_timesteps must be an integer >= 1, got -5",))
    assert not out.exists()


def test_analyze_valid_config_reaches_the_runner(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid file passes every check; its top-level `modes`, `seed` and tables reach the runner, and
    --modes on the command line wins over the file. (The runner is replaced: the modes themselves are
    tested in test_report.py.)"""
    import difflens.analyze.runner as runner
    from difflens.analyze.config import AnalysisConfig

    seen: list[AnalysisConfig] = []

    def fake_run(cfg: AnalysisConfig) -> Path:
        seen.append(cfg)
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "run.json").write_text(json.dumps({"modes": {m: {"status": "ok"} for m in cfg.modes}}))
        return cfg.out / "report.html"

    monkeypatch.setattr(runner, "run_analysis", fake_run)
    config = tmp_path / "analysis.toml"
    config.write_text('modes = ["schedule", "latent"]\nseed = 7\ndevice = "cpu"\n[schedule]\nsteps = 3\n'
                      '[latent]\nframes = 4\n')
    base = ["analyze", "--model", "sd15", "--config", str(config), "--prompt", "a cat"]
    code, _, err = _run([*base, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    cfg = seen[-1]
    assert cfg.modes == ("schedule", "latent") and cfg.seed == 7 and cfg.device == "cpu"
    assert cfg.mode_options == {"schedule": {"steps": 3}, "latent": {"frames": 4}}
    code, _, err = _run([*base, "--modes", "schedule", "--seed", "1", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert seen[-1].modes == ("schedule",) and seen[-1].seed == 1
