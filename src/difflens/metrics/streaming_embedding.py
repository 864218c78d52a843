"""The CLIP/DINOv2 metrics as mergeable accumulators (:class:`~difflens.metrics.base.Metric`): CLIP score,
CMMD and FD-DINOv2, computed with the value functions of ``difflens metrics --metrics clip,cmmd,fd-dinov2``
(:func:`~difflens.metrics.clip.clip_scores`, :func:`~difflens.metrics.cmmd.cmmd_from_embeddings`,
:func:`~difflens.metrics.dinov2.fd_with_bootstrap`).

The CLIP score keeps one float64 score per image (8 bytes; the mean, its bootstrap interval and the
per-prompt means are then the CLI's to the last bit) and the prompts; CMMD and FD-DINOv2 keep the
embedding rows of both sides (their values need every row).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, Metric, MetricResult, Requirement
from difflens.metrics.config import DEFAULT_CLIP_MODEL, DEFAULT_CMMD_CLIP_MODEL, DEFAULT_DINOV2_MODEL
from difflens.metrics.streaming import Rows, RowsPair

IMAGE_EMBEDS = "image_embeds"
TEXT_EMBEDS = "text_embeds"


class ClipScoreMetric(Metric):
    """CLIP score: mean over pairs of 100 * max(cos(E_img, E_txt), 0) (Hessel et al. 2021, difflens'
    convention; see README)."""

    name = "clip"
    keys = ("clip_score",)
    group = "embedding"

    def __init__(self, clip_model: str = DEFAULT_CLIP_MODEL, seed: int = 2020, bootstrap: int = 0) -> None:
        self.extractor = f"clip:{clip_model}"
        self.seed, self.bootstrap = int(seed), int(bootstrap)
        self.scores = Rows()
        self.prompts: list[str] = []
        self.truncated = 0

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(self.extractor, IMAGE_EMBEDS, "fake", prompts=True),)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor, "seed": self.seed, "bootstrap": self.bootstrap}

    def update(self, batch: FeatureBatch) -> None:
        from difflens.metrics.clip import clip_scores

        if batch.real:
            return
        img = batch.features[(self.extractor, IMAGE_EMBEDS)]
        if batch.prompts is None or batch.text_features is None:
            raise DifflensError("the CLIP score needs one prompt per generated image.",
                                "pass prompts=[...] with the fake images")
        txt = batch.text_features[(self.extractor, TEXT_EMBEDS)]
        self.scores.add(np.asarray(clip_scores(img, txt), dtype=np.float64)[:, None])
        self.prompts.extend(batch.prompts)
        self.truncated += int(batch.text_features.get((self.extractor, "truncated"), 0))

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, ClipScoreMetric)
        self.scores.extend(other.scores)
        self.prompts.extend(other.prompts)
        self.truncated += other.truncated

    def reset(self, keep_real: bool = False) -> None:
        self.scores.clear()
        self.prompts = []
        self.truncated = 0

    def _values(self) -> np.ndarray:
        arr = self.scores.array()
        return np.zeros(0) if arr is None else arr[:, 0].astype(np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self._values(), "prompts": list(self.prompts), "truncated": self.truncated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = np.asarray(state["scores"], dtype=np.float64)
        self.scores.clear()
        if scores.size:
            self.scores._parts = [scores[:, None]]  # float64 kept as is (Rows.add would round to float32)
        self.prompts = [str(p) for p in state["prompts"]]
        self.truncated = int(state["truncated"])

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        from difflens.metrics.clip import bootstrap_mean_ci

        scores = self._values()
        if not len(scores):
            raise DifflensError("clip: no generated images were given.", "call update(images, real=False, "
                                "prompts=[...]) first")
        res = MetricResult("clip_score", float(scores.mean()),
                           {"n": len(scores), "n_fake": len(scores), "truncated_prompts": self.truncated})
        if self.bootstrap > 0:
            res.fields["ci95"] = list(bootstrap_mean_ci(scores, self.bootstrap, self.seed))
        if self.truncated:
            res.warnings.append(f"CLIP score: {self.truncated} prompt(s) were truncated for the text encoder")
        return {"clip_score": res}

    def per_prompt(self, lowest: int = 10) -> dict[str, Any]:
        """The per-prompt breakdown (``--per-prompt``) of the scores so far."""
        from difflens.metrics.clip import per_prompt_breakdown

        return per_prompt_breakdown(self.prompts, self._values(), lowest).to_dict()


class _Embeddings(RowsPair, Metric):
    """Keeps the embedding rows of both sides."""

    group = "embedding"
    layer = ""

    def __init__(self, extractor: str, seed: int = 2020, bootstrap: int = 0) -> None:
        self.extractor = extractor
        self.seed, self.bootstrap = int(seed), int(bootstrap)
        self.rows = {"real": Rows(), "fake": Rows()}

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(self.extractor, self.layer, "both"),)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor, "seed": self.seed, "bootstrap": self.bootstrap}

    def update(self, batch: FeatureBatch) -> None:
        self.rows["real" if batch.real else "fake"].add(batch.features[(self.extractor, self.layer)])

    def state_dict(self) -> dict[str, Any]:
        out = {}
        for side in ("real", "fake"):
            arr = self.rows[side].array()
            out[f"{side}_features"] = np.zeros((0, 0), np.float32) if arr is None else arr
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for side in ("real", "fake"):
            self.rows[side].load(np.asarray(state[f"{side}_features"], dtype=np.float32))

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        r, f = self.rows["real"].array(), self.rows["fake"].array()
        if r is None or f is None:
            raise DifflensError(f"{self.name}: no {'real' if r is None else 'fake'} images were given.",
                                "call update(images, real=True) and update(images, real=False) first")
        return r, f


class CmmdMetric(_Embeddings):
    """CMMD (Jayasumana et al. 2024): 1000 * biased MMD^2, RBF sigma = 10, normalized CLIP embeddings."""

    name = "cmmd"
    keys = ("cmmd",)
    layer = IMAGE_EMBEDS

    def __init__(self, cmmd_clip_model: str = DEFAULT_CMMD_CLIP_MODEL, seed: int = 2020,
                 bootstrap: int = 0) -> None:
        super().__init__(f"clip-cmmd:{cmmd_clip_model}", seed, bootstrap)

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        from difflens.metrics.cmmd import cmmd_from_embeddings

        x, y = self._pair()
        d = cmmd_from_embeddings(x, y, bootstrap=self.bootstrap, seed=self.seed).to_dict()
        return {"cmmd": MetricResult("cmmd", d.pop("value"), d)}


class FdDinov2Metric(_Embeddings):
    """FD-DINOv2 (Stein et al. 2023): the FID formula on DINOv2 CLS features."""

    name = "fd-dinov2"
    keys = ("fd_dinov2",)
    layer = "cls"

    def __init__(self, dinov2_model: str = DEFAULT_DINOV2_MODEL, seed: int = 2020,
                 bootstrap: int = 0) -> None:
        super().__init__(f"dinov2:{dinov2_model}", seed, bootstrap)

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        from difflens.metrics.dinov2 import fd_with_bootstrap

        x, y = self._pair()
        d = fd_with_bootstrap(x, y, self.bootstrap, self.seed).to_dict()
        res = MetricResult("fd_dinov2", d.pop("value"), d)
        dim = x.shape[1]
        for name, n in (("real", len(x)), ("fake", len(y))):
            if n <= dim:
                res.warnings.append(f"FD-DINOv2: the {name} set has {n} samples, not more than the feature "
                                    f"dimension {dim}: its covariance is singular")
        return {"fd_dinov2": res}
