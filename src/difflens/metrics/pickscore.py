"""The ``pickscore`` metric: PickScore (Kirstain et al. 2023) per generated image against its prompt,
``logit_scale.exp() * cos(text, image)`` as the model card computes it (the network and its preprocessing:
:mod:`difflens.features.pickscore`), with the mean, its bootstrap interval, the per-prompt table and the
per-image scores of :class:`~difflens.metrics.per_image.PerImageScoreMetric`.

Where several images share a prompt, the model card's softmax over the candidates,
``p_i = exp(s_i) / sum_j exp(s_j)`` over the images j of that prompt, is the per-prompt field
``preference`` (the probabilities in descending order, so the table does not depend on the row order) and
:meth:`PickScoreMetric.preferences` gives each image's probability in row order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.config import DEFAULT_PICKSCORE_MODEL
from difflens.metrics.per_image import PerImageScoreMetric, group_by_prompt


def softmax(scores: Any) -> np.ndarray:
    """``exp(s - max) / fsum(exp(s - max))`` (float64; the sum exactly rounded, so order-free)."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max())
    return e / math.fsum(e.tolist())


class PickScoreMetric(PerImageScoreMetric):
    """Mean PickScore (logit_scale.exp() * cos) of the generated images against their prompts."""

    name = "pickscore"
    keys = ("pickscore",)
    label = "PickScore"

    def __init__(self, model: str = DEFAULT_PICKSCORE_MODEL, processor: str | None = None,
                 dtype: str = "float32") -> None:
        from difflens.config import DTYPES

        if str(dtype) not in DTYPES:
            raise DifflensError(f"unknown --preference-dtype {dtype!r}.", f"use one of {', '.join(DTYPES)}")
        super().__init__("pickscore")
        self.model, self.processor, self.dtype = str(model), processor, str(dtype)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor, "model": self.model, "processor": self.processor,
                "dtype": self.dtype}

    def build_extractor(self, device: str | None, offline: bool) -> Any:
        from difflens.features.pickscore import load_pickscore

        return load_pickscore(self.model, self.processor, device=device, dtype=self.dtype, offline=offline)

    def result_fields(self) -> dict[str, Any]:
        return {"scale": "logit_scale.exp() * cos"}

    def prompt_fields(self, scores: np.ndarray) -> dict[str, Any]:
        return {"preference": sorted(softmax(scores).tolist(), reverse=True)}

    def preferences(self) -> np.ndarray:
        """Each image's softmax preference among the images of its prompt, in row order (float64)."""
        scores = self.scores()
        out = np.zeros(len(scores), np.float64)
        for idx in group_by_prompt(self.prompts).values():
            out[idx] = softmax(scores[idx])
        return out
