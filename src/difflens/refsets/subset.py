"""Reproducible subsets of a dataset's rows: ``--num-real N --subset-seed S``.

Scheme ``splitmix64-rank-v1``: every row index ``i`` gets the key ``splitmix64(splitmix64(S) XOR i)`` and the
subset is the ``N`` rows with the smallest keys, listed in ascending row order. splitmix64 (Steele, Lea and
Flood 2014, the seeding generator of xoshiro) is a bijection on 64-bit integers, so keys never tie and the
subset depends only on (total, N, S): not on the numpy or Python version, the batch size, streaming or not.
It is also nested: with the same seed, the N-row subset is contained in the M-row subset for N < M, so
raising ``--num-real`` extends a reference set instead of replacing it.

The subset is recorded by its seed and the SHA-256 of its row indices (int64 little-endian, ascending).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from difflens.errors import DifflensError

SCHEME = "splitmix64-rank-v1"
ALL_ROWS = "all"
_CHUNK = 1 << 22


def _splitmix64(x: Any) -> Any:
    """The splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    import numpy as np

    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def subset_keys(indices: Any, seed: int) -> Any:
    """The ranking key of each row index under ``seed`` (uint64)."""
    import numpy as np

    base = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    return _splitmix64(np.asarray(indices, dtype=np.uint64) ^ base)


def indices_digest(indices: Any) -> str:
    """SHA-256 of row indices as int64 little-endian bytes, in the given order."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(np.asarray(indices, dtype="<i8")).tobytes()).hexdigest()


@dataclass(frozen=True)
class Subset:
    """Which rows of a dataset are used: ``indices`` ascending, drawn by ``scheme`` with ``seed``."""

    total: int
    indices: Any  # np.ndarray int64, ascending
    seed: int | None
    scheme: str

    @property
    def num(self) -> int:
        return len(self.indices)

    @property
    def digest(self) -> str:
        return indices_digest(self.indices)

    def to_dict(self) -> dict[str, Any]:
        """What goes into result files (the indices themselves by digest only)."""
        return {"num": self.num, "total": self.total, "seed": self.seed, "scheme": self.scheme,
                "indices_sha256": self.digest}


def draw_subset(total: int, num: int | None, seed: int = 0) -> Subset:
    """The rows to use out of ``total``: all of them when ``num`` is None (or equals ``total``), else the
    ``num`` rows of scheme :data:`SCHEME` under ``seed``."""
    import numpy as np

    if total < 0:
        raise ValueError("total must be >= 0")
    if num is None:
        return Subset(total, np.arange(total, dtype=np.int64), None, ALL_ROWS)
    if num <= 0:
        raise DifflensError(f"--num-real must be positive, got {num}.", "pass a positive number of rows")
    if seed < 0 or seed >= 2**63:
        raise DifflensError(f"--subset-seed must be between 0 and 2^63-1, got {seed}.",
                            "pass a non-negative integer seed")
    if num > total:
        raise DifflensError(f"--num-real {num} asks for more rows than the dataset has ({total}).",
                            f"pass --num-real {total} or fewer")
    if num == total:
        return Subset(total, np.arange(total, dtype=np.int64), seed, SCHEME)
    best_keys = np.zeros(0, dtype=np.uint64)
    best_idx = np.zeros(0, dtype=np.int64)
    for start in range(0, total, _CHUNK):
        idx = np.arange(start, min(total, start + _CHUNK), dtype=np.int64)
        keys = np.concatenate([best_keys, subset_keys(idx, seed)])
        idx = np.concatenate([best_idx, idx])
        if len(keys) > num:
            keep = np.argpartition(keys, num - 1)[:num]
            keys, idx = keys[keep], idx[keep]
        best_keys, best_idx = keys, idx
    return Subset(total, np.sort(best_idx), seed, SCHEME)
