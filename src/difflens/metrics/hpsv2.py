"""The ``hpsv2`` metric: HPSv2 (Wu et al. 2023) per generated image against its prompt, reported on the
leaderboard's scale, ``100 * cos(image, text)`` of the normalized embeddings (HPSv2 ``evaluation.py``;
``hpsv2.score`` returns the bare cosine). The mean, its bootstrap interval, the per-prompt table and the
per-image scores come from :class:`~difflens.metrics.per_image.PerImageScoreMetric`; the network, its
preprocessing and the checkpoint rules are :mod:`difflens.features.hpsv2`.

Versions: 2.1 (default; HuggingFace ``xswu/HPSv2`` file ``HPS_v2.1_compressed.pt``) and 2.0
(``HPS_v2_compressed.pt``); they differ only by checkpoint, and their scores are not comparable (HPSv2
README), so the version is recorded in the result and the fingerprint.
"""

from __future__ import annotations

from typing import Any, get_args

from difflens.errors import DifflensError
from difflens.metrics.config import DEFAULT_HPSV2_ARCH, DEFAULT_HPSV2_VERSION, HpsVersion
from difflens.metrics.per_image import PerImageScoreMetric


class Hpsv2Metric(PerImageScoreMetric):
    """Mean HPSv2 score (100 * cos) of the generated images against their prompts."""

    name = "hpsv2"
    keys = ("hpsv2",)
    label = "HPSv2"

    def __init__(self, checkpoint: str | None = None, arch: str = DEFAULT_HPSV2_ARCH,
                 version: HpsVersion = DEFAULT_HPSV2_VERSION, dtype: str = "float32") -> None:
        if str(version) not in get_args(HpsVersion):
            raise DifflensError(f"unknown --hpsv2-version {version!r}.",
                                f"use one of {', '.join(get_args(HpsVersion))}")
        from difflens.config import DTYPES

        if str(dtype) not in DTYPES:
            raise DifflensError(f"unknown --preference-dtype {dtype!r}.", f"use one of {', '.join(DTYPES)}")
        super().__init__("hpsv2")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.arch, self.version, self.dtype = str(arch), str(version), str(dtype)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor, "checkpoint": self.checkpoint, "arch": self.arch,
                "version": self.version, "dtype": self.dtype}

    def build_extractor(self, device: str | None, offline: bool) -> Any:
        from difflens.features.hpsv2 import load_hpsv2

        return load_hpsv2(self.checkpoint, self.arch, self.version, device=device, dtype=self.dtype,
                          offline=offline)

    def result_fields(self) -> dict[str, Any]:
        return {"version": self.version, "scale": "100 * cos"}
