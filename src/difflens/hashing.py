"""SHA-256 of files: the one hasher behind weights pins, statistics downloads, cache keys and manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["CHUNK_BYTES", "sha256_file"]

#: Read size of :func:`sha256_file` (1 MiB): constant memory for multi-GB weight files.
CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path, chunk: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of the file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
