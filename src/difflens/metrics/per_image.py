"""Per-image scores of generated images against their prompts (preference models: HPSv2, PickScore, ...)
as one mergeable :class:`~difflens.metrics.base.Metric`.

A subclass names the extractor (a registry name, the key of ``FeatureBatch.features``) whose layer
``score`` is one number per image (``(N, 1)`` float32, computed with the image's prompt), and how to build
it (:meth:`PerImageScoreMetric.build_extractor`). This class keeps, on the fake side only, one float64
score per image and its prompt (merge concatenates; the state is a float64 array and a list of strings,
no pickle), and computes:

* ``value``: the mean score, ``math.fsum(s) / n`` (exactly rounded, so it does not depend on the order of
  the rows, the batching or the sharding);
* ``ci95`` (when ``ComputeContext.bootstrap`` = B > 0): the percentile interval of the mean over B
  resamples of the images with replacement, seeded by ``ComputeContext.seed``
  (:func:`difflens.metrics.bootstrap.bootstrap_indices` / ``percentile_interval``);
* ``n`` (= ``n_fake``): the number of scored images;
* ``per_prompt``: ``{prompt: {"count": k, "mean": fsum / k, **extra}}`` in sorted prompt order
  (subclasses add fields per prompt, e.g. PickScore's softmax preference);
* :meth:`PerImageScoreMetric.per_image`: the scores and prompts in row order (``difflens compare``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, Metric, MetricResult, Requirement

SCORE = "score"


def fmean(values: Any) -> float:
    """``math.fsum(values) / n``: the exactly rounded sum, so the mean is the same in any row order."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return math.fsum(arr.tolist()) / len(arr)


def bootstrap_mean_interval(scores: Any, num: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean over ``num`` seeded resamples of the images (with replacement)."""
    from difflens.metrics.bootstrap import bootstrap_indices, percentile_interval

    arr = np.asarray(scores, dtype=np.float64)
    return percentile_interval([float(arr[idx].mean()) for idx in bootstrap_indices(len(arr), num, seed)])


def group_by_prompt(prompts: list[str]) -> dict[str, np.ndarray]:
    """Prompt -> the row indices of its images (ascending), prompts in sorted order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return {p: np.asarray(groups[p], dtype=np.int64) for p in sorted(groups)}


class PerImageScoreMetric(Metric):
    """Base class of the per-image score metrics (group ``features``, fake side, prompts required).

    Subclasses set ``name``, ``keys`` (one key), ``label`` (a human name for messages) and
    ``self.extractor`` (the extractor registry name/key), and override :meth:`build_extractor` when the
    extractor needs options (checkpoint, architecture); :meth:`prompt_fields` adds per-prompt fields and
    :meth:`result_fields` fields of the result (e.g. the scale convention)."""

    group = "features"
    permutation_invariant = True
    label: ClassVar[str] = ""

    def __init__(self, extractor: str) -> None:
        self.extractor = extractor
        self._scores: list[np.ndarray] = []
        self.prompts: list[str] = []

    # ------------------------------------------------------------------------------------- declaration

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(self.extractor, SCORE, "fake", prompts=True),)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor}

    def build_extractor(self, device: str | None, offline: bool) -> Any:
        """The extractor that gives layer ``score`` (default: the features registry's ``self.extractor``)."""
        from difflens.features.registry import get_extractor

        return get_extractor(self.extractor, device=device, offline=offline)

    def build_extractors(self, device: str | None, offline: bool) -> dict[str, Any]:
        """``{extractor key: extractor}`` for every requirement (the route calls this)."""
        return {self.extractor: self.build_extractor(device, offline)}

    # ------------------------------------------------------------------------------------------ state

    def update(self, batch: FeatureBatch) -> None:
        if batch.real:
            return  # a fake-only metric: the real side is not scored
        key = (self.extractor, SCORE)
        if key not in batch.features:
            raise DifflensError(f"{self.name}: the batch has no {self.extractor!r} scores.",
                                f"run the {self.extractor!r} extractor (layer 'score') on the images")
        scores = np.asarray(batch.features[key], dtype=np.float64)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim != 1:
            raise DifflensError(f"{self.name}: scores must be one number per image, got {scores.shape}.",
                                "the extractor's 'score' layer is (N, 1)")
        if batch.prompts is None:
            raise DifflensError(f"{self.label or self.name} needs one prompt per generated image.",
                                "pass --prompts FILE (or prompts=[...] with the images)")
        if len(batch.prompts) != len(scores):
            raise DifflensError(f"{self.name}: {len(scores)} images but {len(batch.prompts)} prompts.",
                                "give exactly one prompt per generated image")
        if len(scores):
            self._scores.append(scores.copy())
            self.prompts.extend(str(p) for p in batch.prompts)

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, PerImageScoreMetric)
        if other._scores:
            self._scores.append(other.scores().copy())
        self.prompts.extend(other.prompts)

    def reset(self, keep_real: bool = False) -> None:
        self._scores = []
        self.prompts = []

    def scores(self) -> np.ndarray:
        """The float64 scores so far, in row order."""
        if len(self._scores) > 1:
            self._scores = [np.concatenate(self._scores)]
        return self._scores[0] if self._scores else np.zeros(0, np.float64)

    def per_image(self) -> tuple[np.ndarray, list[str]]:
        """(float64 scores, prompts), one per generated image, in row order (a copy)."""
        return self.scores().copy(), list(self.prompts)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores().copy(), "prompts": list(self.prompts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = np.asarray(state["scores"], dtype=np.float64).ravel()
        prompts = [str(p) for p in state["prompts"]]
        if len(prompts) != len(scores):
            raise DifflensError(f"{self.name} state: {len(scores)} scores but {len(prompts)} prompts.",
                                "load a state saved by the same metric")
        self._scores = [scores.copy()] if len(scores) else []
        self.prompts = prompts

    # ---------------------------------------------------------------------------------------- compute

    def prompt_fields(self, scores: np.ndarray) -> dict[str, Any]:
        """Extra per-prompt fields from the scores of one prompt's images (row order); none by default."""
        return {}

    def result_fields(self) -> dict[str, Any]:
        """Extra fields of the result (the scale convention, the model version); none by default."""
        return {}

    def per_prompt(self) -> dict[str, dict[str, Any]]:
        """``{prompt: {"count", "mean", **prompt_fields}}`` in sorted prompt order."""
        scores = self.scores()
        return {p: {"count": len(idx), "mean": fmean(scores[idx]), **self.prompt_fields(scores[idx])}
                for p, idx in group_by_prompt(self.prompts).items()}

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        scores = self.scores()
        if not len(scores):
            raise DifflensError(f"{self.name}: no generated images were given.",
                                "score generated images with their prompts first")
        fields: dict[str, Any] = {"n": len(scores), "n_fake": len(scores), **self.result_fields()}
        bootstrap = int(context.bootstrap) if context is not None else 0
        if bootstrap > 0:
            fields["ci95"] = list(bootstrap_mean_interval(scores, bootstrap, int(context.seed)))  # type: ignore[union-attr]
        fields["per_prompt"] = self.per_prompt()
        key = self.keys[0]
        return {key: MetricResult(key, fmean(scores), fields)}
