"""Run every ``benchmarks/bench_*.py`` in turn, each in its own subprocess, and print their output.

    python benchmarks/run_all.py            # full sizes
    python benchmarks/run_all.py --quick    # small sizes, a few minutes in all
    python benchmarks/run_all.py --only end_to_end --only fid   # names containing these words

Each benchmark runs with the same Python interpreter as this script. A benchmark that fails is reported
(its exit code and the tail of its output) and the others still run; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """One line describing the machine, for the top of the output."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = "no CUDA"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        torch_v = torch.__version__
    except ImportError:
        torch_v = "absent"
    return (f"{cpu}; {os.cpu_count()} logical cores; {gpu}; python {platform.python_version()}; "
            f"torch {torch_v}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Pass --quick to every benchmark.")
    parser.add_argument("--only", action="append", default=[],
                        help="Run only benchmarks whose name contains this word (repeatable).")
    parser.add_argument("--timeout", type=float, default=None,
                        help="Seconds allowed per benchmark (default: no limit).")
    args = parser.parse_args(argv)

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if any(w in s.stem for w in args.only)]
    if not scripts:
        print("no benchmark matched", file=sys.stderr)
        return 1
    print(f"machine: {machine()}")
    print(f"benchmarks: {', '.join(s.name for s in scripts)}{'  (--quick)' if args.quick else ''}\n")
    failed: list[str] = []
    for script in scripts:
        cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        print(f"=== {script.name}   $ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}",
              flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=HERE.parent, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=args.timeout, check=False)
            out, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
            rc = -1
            out += f"\n(timed out after {args.timeout} s)"
        dt = time.perf_counter() - t0
        if rc == 0:
            print(out.rstrip())
        else:
            failed.append(script.name)
            tail = "\n".join(out.rstrip().splitlines()[-30:])
            print(f"{tail}\nFAILED (exit {rc})")
        print(f"--- {script.name}: {dt:.1f} s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    print("all benchmarks finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
