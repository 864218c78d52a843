"""difflens.allocator: the glibc heap bounds of long streaming runs are set once, and a user's own glibc
malloc settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from difflens.allocator import bound_heap_growth as b; print(b(), b())"


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return subprocess.run([sys.executable, "-c", CODE], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_bounds_are_set_once_unless_the_user_set_them() -> None:
    from difflens.allocator import _libc

    if _libc() is None:  # musl and other libcs: nothing to set, and the function says so
        assert _run({}) == "False False"
        return
    assert _run({}) == "True True"  # applied, then cached: the second call changes nothing
    assert _run({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False False"
    assert _run({"MALLOC_ARENA_MAX": "4"}) == "True True"  # the threshold is still set
