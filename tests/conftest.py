"""Shared fixtures: tiny random diffusers pipelines, saved once per session and loaded back through
`DiffusionPipeline.from_pretrained`, the path users take."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Return a function family -> directory holding a saved tiny pipeline of that family."""
    from difflens.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-pipelines")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = save_tiny_pipeline(family, root / family, seed=0)
        return cache[family]

    return get


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: the suite runs as two xdist workers on two cores, and tiny
    models gain nothing from intra-op threads (OpenMP spinning only slows them down).

    Set, not defaulted: tests compare images made by a CLI subprocess (which reads OMP_NUM_THREADS) with
    images made in this process, and CPU float results may depend on the thread count; a user's
    OMP_NUM_THREADS=8 must not make the two sides differ."""
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)
    # transformers/diffusers bind their log handler to whatever sys.stderr is when they first log; under
    # pytest's capture that stream is closed after the test, and a later log line prints a "Logging error"
    # traceback. Route their records through the root logger (pytest's log capture) instead.
    for name in ("transformers", "diffusers"):
        module = __import__(f"{name}.utils.logging", fromlist=["logging"])
        module.disable_default_handler()
        module.enable_propagation()
