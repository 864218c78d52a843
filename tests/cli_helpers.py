"""CLI helpers shared by the test modules: run `difflens` in process and check a one-line error."""

from __future__ import annotations

import pytest

from difflens.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``difflens argv`` through :func:`difflens.cli.main`; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    """Exit code 2, no traceback, exactly one non-empty line on stderr, containing every word."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len([ln for ln in err.strip().splitlines() if ln.strip()]) == 1, err
    for w in words:
        assert w in err, (w, err)
