"""Importing difflens, `difflens --help`, `difflens metrics --help` and FID from two statistics files import
none of torch, diffusers, transformers (each checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers")

_PROBE = """
import json, sys
{body}
print("LOADED=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _loaded(body: str) -> list[str]:
    code = _PROBE.format(body=body, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED=")][-1]
    return json.loads(line[len("LOADED="):])


def _cli(args: list[str]) -> str:
    return f"""
from difflens.cli import main
try:
    main({args!r})
except SystemExit as exc:
    assert not exc.code, exc.code
"""


def test_probe_sees_heavy_imports() -> None:
    assert _loaded("import torch") == ["torch"]


def test_import_difflens_is_light() -> None:
    assert _loaded("import difflens, difflens.metrics, difflens.cli") == []


def test_help_is_light() -> None:
    assert _loaded(_cli(["--help"])) == []
    assert _loaded(_cli(["metrics", "--help"])) == []


def test_fid_from_two_statistics_files_is_light(tmp_path: Path) -> None:
    import numpy as np

    from difflens.metrics.fingerprint import Fingerprint
    from difflens.metrics.stats import GaussianStats, save_stats

    fp = Fingerprint(protocol="tf-legacy", weights_sha256="d" * 64).to_dict()
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0.0), ("b", 0.5)):
        feats = rng.standard_normal((50, 8)) + shift
        save_stats(tmp_path / f"{name}.npz", GaussianStats.from_features(feats), fp)
    out = tmp_path / "fid.json"
    args = ["metrics", "--real", str(tmp_path / "a.npz"), "--fake", str(tmp_path / "b.npz"),
            "--json", str(out)]
    assert _loaded(_cli(args)) == []
    assert json.loads(out.read_text())["metrics"]["fid"]["value"] > 0
