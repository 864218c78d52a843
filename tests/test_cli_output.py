"""Output a script can rely on: `--json -` puts only the JSON on stdout, `stats list`/`stats show` print to
stdout, Ctrl-C prints one "interrupted:" line (exit 130, nothing half-written, generate resumes), progress
is logged as plain lines off a terminal, and third-party noise shows only with --verbose."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli as run


@pytest.fixture
def feats(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {"real": tmp_path / "real.npy", "fake": tmp_path / "fake.npy"}
    np.save(paths["real"], rng.standard_normal((40, 16)).astype(np.float32))
    np.save(paths["fake"], (rng.standard_normal((36, 16)) * 1.2 + 0.3).astype(np.float32))
    return paths


def test_json_dash_puts_only_the_json_on_stdout(feats: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["metrics", "--real-features", str(feats["real"]), "--fake-features", str(feats["fake"]),
            "--kid-subset-size", "20"]
    code, out, err = run([*base, "--json", "-", "--save-real-stats", str(tmp_path / "s.npz")], capsys)
    assert code == 0, err
    result = json.loads(out)  # the whole of stdout parses: nothing else was printed there
    assert set(result["metrics"]) >= {"fid", "kid"} and result["n_real"] == 40
    assert not (tmp_path / "-").exists()  # no file named '-'
    # the table, the summary line and "wrote" went to stderr
    assert "FID" in err and "n_real=40" in err and f"wrote {tmp_path / 's.npz'}" in err
    # the same text a file gets
    code, file_out, err = run([*base, "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    assert (tmp_path / "m.json").read_text(encoding="utf-8") == out
    assert "FID" in file_out and "wrote" in file_out  # without --json -, the table stays on stdout


def _commands_with_json() -> set[str]:
    import typer

    from difflens.cli import app

    found: set[str] = set()

    def walk(cmd: object, path: str) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        if any("--json" in getattr(p, "opts", ()) for p in getattr(cmd, "params", ())):
            found.add(path)

    walk(typer.main.get_command(app), "")
    return found


def test_every_json_flag_takes_dash_for_stdout(feats: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Each command with --json (found in the CLI itself, so a new one must be added here) prints exactly
    the JSON it would write to a file, and nothing else, on stdout."""
    from PIL import Image

    from difflens.shapes import pretrained_clip

    for side, seed in (("a", 1), ("b", 2)):  # two tiny sample sets from the same prompts, for compare
        (tmp_path / side).mkdir()
        for i, im in enumerate(np.random.default_rng(seed).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)):
            Image.fromarray(im).save(tmp_path / side / f"{i}.png")
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    cheap = {"metrics": ["metrics", "--real-features", str(feats["real"]), "--fake-features",
                         str(feats["fake"]), "--metrics", "fid"],
             "schedule": ["schedule", "sd15", "flux", "--steps", "4"],
             "compare": ["compare", "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--prompts",
                         str(tmp_path / "p.txt"), "--metrics", "clip", "--clip-model", pretrained_clip(),
                         "--bootstrap", "20", "--offline"]}
    assert _commands_with_json() == set(cheap)
    monkeypatch.chdir(tmp_path)
    for name, argv in cheap.items():
        code, out, err = run([*argv, "--json", "-"], capsys)
        assert code == 0, err
        assert not (tmp_path / "-").exists(), name
        dest = tmp_path / f"{name}.json"
        code, _, err = run([*argv, "--json", str(dest)], capsys)
        assert code == 0, err
        assert json.loads(out) == json.loads(dest.read_text(encoding="utf-8")), name


def test_stats_list_and_show_print_to_stdout(feats: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from difflens.refsets.registry import REGISTRY

    code, out, err = run(["stats", "list"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(REGISTRY)  # one entry a line: `stats list | grep NAME` gives the whole entry
    for name, entry in REGISTRY.items():
        (line,) = [ln for ln in lines if ln.startswith(f"stats:{name} ")]
        assert entry.url in line
    assert "cache:" in err and "cache:" not in out

    stats = tmp_path / "s.npz"
    assert run(["metrics", "--real-features", str(feats["real"]), "--save-stats", str(stats)], capsys)[0] == 0
    code, out, err = run(["stats", "show", str(stats)], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["n"], shown["dim"]) == (40, 16)


def test_ctrl_c_in_other_commands_says_nothing_was_written(feats: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """typer turns a KeyboardInterrupt into a silent exit 130; difflens says what stopped. Whether files
    were written is counted by the atomic writer, so the line is true in both cases."""
    import difflens.metrics.evaluate as evaluate_mod
    from difflens.atomic import write_text

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "m.json"
    argv = ["metrics", "--real-features", str(feats["real"]), "--fake-features", str(feats["fake"]),
            "--json", str(out)]
    monkeypatch.setattr(evaluate_mod, "evaluate", stopped)
    code, stdout, err = run(argv, capsys)
    assert code == 130
    assert err.strip().splitlines() == ["interrupted: metrics stopped; nothing written"]
    assert not out.exists() and stdout == ""

    def stopped_after_a_file(*args: object, **kwargs: object) -> None:
        write_text(tmp_path / "cache.txt", "done")
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_mod, "evaluate", stopped_after_a_file)
    code, _, err = run(argv, capsys)
    assert code == 130 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("interrupted: metrics stopped after writing 1 complete file(s)")
    assert str(tmp_path / "cache.txt") in line
    assert not out.exists()


def _manifest_files(out: Path) -> list[str]:
    text = (out / "manifest.jsonl").read_text(encoding="utf-8") if (out / "manifest.jsonl").exists() else ""
    return [json.loads(line)["file"] for line in text.splitlines() if line.strip()]


def test_ctrl_c_during_generate_says_how_to_resume_and_the_rerun_completes(
        tiny_pipeline_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real SIGINT to a `difflens generate` process while it generates (wherever it lands: inside the
    pipeline or between samples), then the same command again."""
    import difflens.console as console_mod

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na dog in the snow\n", encoding="utf-8")
    out = tmp_path / "samples"
    n = 30
    args = ["generate", "--model", str(tiny_pipeline_dir("sd15")), "--prompts", str(prompts), "--num-samples",
            str(n), "--out", str(out), "--steps", "2", "--height", "32", "--width", "32", "--batch-size", "1",
            "--device", "cpu"]
    # a shell's background job ignores SIGINT and its children inherit that; a terminal's Ctrl-C does not
    proc = subprocess.Popen([sys.executable, "-m", "difflens", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while len(_manifest_files(out)) < 2:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "generation did not start"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stdout == ""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("interrupted:")]
    assert len(lines) == 1, stderr
    files = _manifest_files(out)
    assert 2 <= len(files) < n  # stopped mid-run
    assert lines[0] == (f"interrupted: generation stopped with {len(files)} of {n} samples finished in "
                        f"{out}; rerun the same command to resume")
    # nothing half-written: no temporary file, and every image has its manifest line and vice versa
    assert not [p for p in out.rglob(".*")]
    assert sorted(f"images/{p.name}" for p in (out / "images").iterdir()) == sorted(files)

    # the same command resumes and completes; off a terminal it logs progress lines (interval shrunk)
    monkeypatch.setattr(console_mod, "PROGRESS_LOG_INTERVAL_S", 0.0)
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert f"resuming: {len(files)} of {n} samples are finished" in err
    assert sorted(_manifest_files(out)) == [f"images/{i:06d}.png" for i in range(n)]
    assert len(list((out / "images").iterdir())) == n
    progress_lines = [ln for ln in err.splitlines() if ln.startswith("generate: ")]
    assert progress_lines[-1].startswith(f"generate: {n}/{n} (") and "img/s" in progress_lines[-1]
    assert len(progress_lines) >= n - len(files)  # one per sample with a zero interval, and the last


def test_progress_off_a_terminal_logs_plain_lines(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import difflens.console as console_mod

    assert not console_mod.console.is_terminal  # captured stderr is not a terminal
    batches = [list(range(4))] * 5
    monkeypatch.setattr(console_mod, "PROGRESS_LOG_INTERVAL_S", 0.0)
    assert sum(len(b) for b in console_mod.progress(batches, total=20, description="Inception x")) == 20
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [f"Inception x: {k}/20" for k in (4, 8, 12, 16, 20, 20)]
    assert all(ln.endswith(" left)") and " img/s, " in ln for ln in lines)
    assert lines[-1].endswith("0:00:00 left)")

    monkeypatch.setattr(console_mod, "PROGRESS_LOG_INTERVAL_S", 3600.0)  # only the closing line
    list(console_mod.progress(iter(range(7)), total=None, description="encode", unit="it"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("encode: 7 (") and " it/s, ? left)" in lines[0]


_NOISY = """
import sys
import warnings

import numpy as np

from difflens.cli import app, main
from difflens.console import DifflensWarning, console


@app.command("noisy")
def noisy() -> None:
    warnings.warn_explicit("torch-style deprecation", FutureWarning, "torch/fake.py", 1, module="torch.fake")
    np.log(np.zeros(1))  # numpy: RuntimeWarning, divide by zero
    from transformers.utils import logging as hf_logging  # imported after the CLI set things up, as in use

    hf_logging.get_logger("transformers.fake").warning("a transformers log warning")
    for _ in hf_logging.tqdm(range(3), desc="Loading weights"):  # the bar transformers shows per load
        pass
    warnings.warn("difflens python warning", DifflensWarning)
    console.print("warning: difflens line")


main(sys.argv[1:])
"""


def test_third_party_noise_only_with_verbose(tmp_path: Path) -> None:
    """Real triggers of each kind: a FutureWarning attributed to torch, a numpy RuntimeWarning, a
    transformers logger warning and transformers' own progress bar; difflens's lines always show."""
    script = tmp_path / "noisy.py"
    script.write_text(_NOISY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS",
                        "DIFFLENS_VERBOSE")}
    third_party = ("torch-style deprecation", "divide by zero", "a transformers log warning",
                   "Loading weights")
    own = ("difflens python warning", "warning: difflens line")

    quiet = subprocess.run([sys.executable, str(script), "noisy"], capture_output=True, text=True, env=env,
                           timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert [t for t in third_party if t in quiet.stderr] == [], quiet.stderr
    assert all(t in quiet.stderr for t in own), quiet.stderr

    loud = subprocess.run([sys.executable, str(script), "noisy", "--verbose"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert all(t in loud.stderr for t in (*third_party, *own)), loud.stderr
    assert quiet.stdout == loud.stdout == ""
