"""`difflens analyze` isolates a failing mode, and report.html renders in headless Chromium without
console errors, showing every section (issue 7)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from difflens.cli import main

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is required (make test installs it via scripts/ensure-chromium.sh)"
    return path


def render(html: Path, tmp: Path) -> tuple[str, list[str], Path]:
    """DOM after load, console messages, and a screenshot of the page."""
    shot = tmp / "report.png"
    base = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run([*base, "--window-size=1280,2000", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, text=True, timeout=120)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    return dom.stdout, console, shot


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir) -> Path:
    from difflens.demo.sample_images import natural_crops, write_folder
    from difflens.metrics.inception import make_random_inception_weights

    root = tmp_path_factory.mktemp("analyze")
    real = write_folder(natural_crops(12, 32, seed=0), root / "real")
    weights = make_random_inception_weights(root / "inception.pth")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car\n")
    config = root / "analysis.toml"
    config.write_text(
        "[metrics]\n"
        f'inception_weights = "{weights}"\nsteps = 2\nkid_subset_size = 4\nmetrics = "fid,kid,pr"\n'
        'embedding_metrics = "clip"\nclip_model = "/nonexistent/clip-model"\n'
        '[schedule]\nsteps = 10\ncompare = ["sd3"]\n'
        '[attention]\nsteps = 3\nheight = 32\nwidth = 32\n'
        '[latent]\nframes = 3\nsteps = 2\nsize = 32\n'
    )
    out = root / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--model", str(tiny_pipeline_dir("sd15")), "--real", str(real), "--prompts",
              str(prompts), "--num-samples", "4", "--prompt", "a photo of a cat", "--config", str(config),
              "--device", "cpu", "--offline", "--out", str(out)])
    assert exit_info.value.code == 1  # one mode failed: report written, non-zero exit for scripts
    return out


def test_failing_mode_is_reported_and_others_complete(run_dir: Path) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    assert info["modes"]["metrics"]["status"] == "error"
    assert "/nonexistent/clip-model" in info["modes"]["metrics"]["error"]
    for mode in ("schedule", "attention", "latent"):
        assert info["modes"][mode]["status"] == "ok", info["modes"][mode]
    assert (run_dir / "schedule" / "schedule.json").is_file()
    assert (run_dir / "attention" / "attention.json").is_file()
    assert (run_dir / "latent" / "interpolation" / "interpolation.json").is_file()


def test_report_renders_in_chromium_with_every_section(run_dir: Path, tmp_path: Path) -> None:
    html = run_dir / "report.html"
    text = html.read_text()
    assert not re.search(r"(src|href)=\"https?://", text), "the report must not fetch anything"
    dom, console, shot = render(html, tmp_path)
    assert console == [], console
    assert 'data-rendered="1"' in dom
    for mode in ("metrics", "schedule", "attention", "latent"):
        assert f'data-mode="{mode}"' in dom
    assert 'id="summary"' in dom and 'id="configuration"' in dom
    assert "This mode failed:" in dom and "/nonexistent/clip-model" in dom
    assert dom.count("<img ") >= 4
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_report_compares_runs_side_by_side(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--model", str(run_dir.parent / "run"), "--modes", "schedule", "--out", str(other)])
    assert exit_info.value.code == 2  # a run folder is not a model: clear error, nothing written
    assert not other.exists()
    shutil.copytree(run_dir, other)
    info = json.loads((other / "run.json").read_text())
    info["label"] = "second run"
    (other / "run.json").write_text(json.dumps(info))
    combined = tmp_path / "compare.html"
    main_exit = None
    try:
        main(["report", str(run_dir), str(other), "--out", str(combined)])
    except SystemExit as exc:
        main_exit = exc.code
    assert main_exit in (0, None)
    dom, console, _ = render(combined, tmp_path)
    assert console == []
    assert 'id="comparison"' in dom and "second run" in dom
    assert "overlaid schedules" in dom


def test_report_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not a difflens run folder" in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()
