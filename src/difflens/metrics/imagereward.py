"""``imagereward``: the ImageReward score (Xu et al. 2023) of each generated image against its prompt, as
``ImageReward.score(prompt, image)`` of pip ``image-reward`` 1.5 reports it: the reward head's output
z-scored with the published constants, ``(r - 0.16717362830052426) / 1.0333394966054072`` (0 is the
average of ImageReward's training comparisons; higher is preferred). The mean over images, its bootstrap
interval and the per-prompt means come from :class:`~difflens.metrics.per_image.PerImageScoreMetric`.

Network, preprocessing and the strict checkpoint loading: :mod:`difflens.features.imagereward`.
"""

from __future__ import annotations

from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.per_image import PerImageScoreMetric


class ImageRewardMetric(PerImageScoreMetric):
    """Mean ImageReward score of the generated images (fake side, one prompt per image).

    ``checkpoint``: ImageReward.pt (None: ``THUDM/ImageReward``'s from the hub or its cache);
    ``tokenizer``: a hub id or folder (None: bert-base-uncased); ``config``: the architecture (None: the
    published one; a med_config.json path or a dict); ``dtype``: float32, or float16/bfloat16 autocast of
    the forward pass (``--preference-dtype``; the reward head stays float32)."""

    name = "imagereward"
    keys = ("imagereward",)
    label = "ImageReward"

    def __init__(self, checkpoint: str | None = None, tokenizer: str | None = None, config: Any = None,
                 dtype: str = "float32") -> None:
        from difflens.config import DTYPES

        if str(dtype) not in DTYPES:
            raise DifflensError(f"unknown --preference-dtype {dtype!r}.", f"use one of {', '.join(DTYPES)}")
        super().__init__("imagereward")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.tokenizer = None if tokenizer is None else str(tokenizer)
        self.config = config
        self.dtype = str(dtype)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "checkpoint": self.checkpoint, "tokenizer": self.tokenizer,
                "config": self.config if not isinstance(self.config, dict) else sorted(self.config.items()),
                "dtype": self.dtype}

    def build_extractor(self, device: str | None, offline: bool) -> Any:
        from difflens.features.imagereward import load_imagereward

        return load_imagereward(self.checkpoint, tokenizer=self.tokenizer, config=self.config, device=device,
                                dtype=self.dtype, offline=offline)

    def result_fields(self) -> dict[str, Any]:
        from difflens.features.imagereward import REWARD_MEAN, REWARD_STD

        return {"scale": f"z-scored reward (r - {REWARD_MEAN}) / {REWARD_STD}, as ImageReward.score "
                         "(image-reward 1.5) returns it"}
