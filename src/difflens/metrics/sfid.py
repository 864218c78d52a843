"""sFID (Nash et al. 2021, "Generating images with sparse representations"), as the ADM evaluator computes
it (openai/guided-diffusion evaluations/evaluator.py): the Frechet distance, FID's formula, on the first 7
channels of the Inception ``mixed_6/conv`` spatial features, 17 x 17 x 7 = 2023-d, flattened in TF's NHWC
order (``spatial[..., :7]`` reshaped per image).

    sFID = ||mu_r - mu_f||^2 + Tr S_r + Tr S_f - 2 Tr((S_r S_f)^(1/2))   on those 2023-d rows

The features are the ``spatial`` layer of the ``inception`` extractor (TF1-exact bilinear resize to 299, as
the TF graph does; :func:`difflens.features.inception.spatial_features` says why that layer is
``Mixed_6d.branch1x1`` of torch-fidelity's network). A side may come from an ADM reference batch's
statistics: ``mu_s`` / ``sigma_s`` (:meth:`~difflens.metrics.frechet.FrechetMetric.load_side_stats`).
"""

from __future__ import annotations

from typing import ClassVar

from difflens.metrics.config import DEFAULT_SEED
from difflens.metrics.frechet import FrechetMetric

SPATIAL = "spatial"


class SfidMetric(FrechetMetric):
    """sFID: :class:`~difflens.metrics.frechet.FrechetMetric` on ``inception`` / ``spatial`` (2023-d)."""

    name = "sfid"
    keys = ("sfid",)
    stats_keys: ClassVar[tuple[str, str]] = ("mu_s", "sigma_s")

    def __init__(self, seed: int = DEFAULT_SEED, bootstrap: int = 0, inception_weights: str | None = None,
                 inception_impl: str | None = None) -> None:
        super().__init__("inception", SPATIAL, seed, bootstrap, inception_weights, inception_impl)
