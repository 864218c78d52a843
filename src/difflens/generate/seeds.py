"""Per-sample seeds: sample ``i`` of a run with seed ``s`` uses ``sample_seed(s, i)``.

The seed is a hash of ``(s, i)``, so it does not depend on the batch size, on the order samples are made
in, or on how many runs it took (resume). It is recorded in the manifest; regenerating a sample alone is
``pipe(prompt, ..., generator=torch.Generator("cpu").manual_seed(seed))``.
"""

from __future__ import annotations

import hashlib
from typing import Any

SEED_SCHEME = "sha256(difflens-sample-seed-v1:{seed}:{index})[:8] >> 1"


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run started with ``seed`` (deterministic, well spread)."""
    if index < 0:
        raise ValueError("index must be >= 0")
    digest = hashlib.sha256(f"difflens-sample-seed-v1:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generator_for(sample_seed_value: int) -> Any:
    """The CPU generator a sample is drawn with: ``torch.Generator("cpu").manual_seed(seed)``."""
    import torch

    return torch.Generator("cpu").manual_seed(int(sample_seed_value))
