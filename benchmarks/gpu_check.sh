#!/usr/bin/env bash
# GPU check: exercises every CUDA path of difflens on one GPU and prints one line per check with its
# figure (PASS/FAIL/SKIP name: ...). Sized for at most 8 minutes on one current data-centre GPU (H100/H200).
#
#   benchmarks/gpu_check.sh                     # every check, full sizes
#   benchmarks/gpu_check.sh --quick             # small sizes (about a minute)
#   benchmarks/gpu_check.sh --only metrics,attention --out /tmp/gpu-check
#
# Checks (see benchmarks/gpu_check.py): env, inception_u8, inception_png, clip, dinov2, metrics_50k,
# attention, torchrun_nccl.
#
# Exit codes:
#   0  every check that ran passed
#   1  at least one check failed
#   2  bad arguments (one line on stderr)
#   3  SKIP: no CUDA GPU visible (nothing was run; distinct from 0 so a skip is never read as a pass)
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --quick) ARGS+=("--quick"); shift ;;
        --only|--out|--budget-s)
            if [ $# -lt 2 ] || [ -z "$2" ] || [ "${2#--}" != "$2" ]; then
                echo "gpu_check.sh: $1 needs a value; fix: e.g. $1 $( [ "$1" = --only ] && echo metrics_50k || ([ "$1" = --out ] && echo /tmp/gpu-check || echo 450))" >&2
                exit 2
            fi
            ARGS+=("$1" "$2"); shift 2 ;;
        *) echo "gpu_check.sh: unknown argument '$1'; fix: see benchmarks/gpu_check.sh --help" >&2; exit 2 ;;
    esac
done

if ! command -v "$PY" >/dev/null 2>&1 && [ ! -x "$PY" ]; then
    echo "gpu_check.sh: python '$PY' not found; fix: set PYTHON=/path/to/python or run make install" >&2
    exit 2
fi

# Argument values are checked by the Python side before anything heavy (exit 2 there too).
"$PY" "$HERE/gpu_check.py" --validate-only "${ARGS[@]+"${ARGS[@]}"}" || exit 2

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)' \
        2>/dev/null; then
    echo "SKIP: no GPU (torch.cuda.is_available() is False on this machine); nothing was run (exit 3)"
    exit 3
fi

export PYTHONUNBUFFERED=1
exec "$PY" "$HERE/gpu_check.py" "${ARGS[@]+"${ARGS[@]}"}"
