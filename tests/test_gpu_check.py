"""benchmarks/gpu_check.sh: the parts a machine without a GPU can check (arguments, the skip message and its
exit code, the check runner itself on CPU). The GPU figures come from running it on a GPU machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})


def test_help_documents_the_exit_codes() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    codes = ("0  every check", "1  at least one check failed", "2  bad arguments", "3  SKIP: no CUDA GPU")
    for code in codes:
        assert code in proc.stdout


@pytest.mark.parametrize("args, words", [
    (("--bogus",), "unknown argument '--bogus'"),
    (("--only",), "--only needs a value"),
    (("--only", "metrics_50k,nope"), "unknown check(s) nope"),
    (("--budget-s", "-5"), "--budget-s must be positive"),
    (("--out",), "--out needs a value"),
])
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], words: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "fix:" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_a_gpu_it_skips_with_exit_3() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the skip path does not apply")
    proc = _run("--quick", "--only", "env,metrics_50k")
    assert proc.returncode == 3, proc
    assert proc.stdout.strip().splitlines() == [
        "SKIP: no GPU (torch.cuda.is_available() is False on this machine); nothing was run (exit 3)"]


def test_check_runner_dry_run_on_cpu(tmp_path: Path) -> None:
    """The runner's own plumbing (selection, one line per check, summary, exit code) on CPU."""
    import json

    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--allow-cpu", "--quick", "--only",
           "env",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("PASS env: torch ") and lines[-1].startswith("ALL PASSED (1 checks")
    assert json.loads((tmp_path / "summary.json").read_text())["env"]["status"] == "PASS"
