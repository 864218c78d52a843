"""The one testing seam of difflens: fault injection for the tests of resumable writes.

Production code calls :func:`fault` at a few named stages; it does nothing unless the environment variable
:data:`FAULT_ENV` is set, which only tests do (in-process with ``monkeypatch.setenv`` or for a child process
through its environment). Stages called by :mod:`difflens.generate.runner`: ``write-png`` (inside the atomic
PNG write), ``after-png`` (PNG in place, manifest line not yet written), ``after-sample`` (both written).
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["FAULT_ENV", "fault", "fault_spec"]

#: ``crash:K`` raises after K samples of this process are finished, ``kill:K`` SIGKILLs the process after K
#: samples, ``killpng:K`` SIGKILLs after the (K+1)-th PNG is in place but before its manifest line,
#: ``enospc:K`` fails the (K+1)-th PNG write with ENOSPC.
FAULT_ENV = "DIFFLENS_TEST_FAULT"


def fault_spec() -> tuple[str, int] | None:
    raw = os.environ.get(FAULT_ENV, "")
    if ":" not in raw:
        return None
    kind, _, k = raw.partition(":")
    try:
        return kind, int(k)
    except ValueError:
        return None


def fault(stage: str, done_here: int) -> None:
    """Test hook (see FAULT_ENV); does nothing unless the variable is set."""
    spec = fault_spec()
    if spec is None:
        return
    kind, k = spec
    if done_here != k:
        return
    if kind == "crash" and stage == "after-sample":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={kind}:{k})")
    if (kind == "kill" and stage == "after-sample") or (kind == "killpng" and stage == "after-png"):
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc" and stage == "write-png":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
