"""Frechet distance on any registered extractor's features: ``fd-<extractor>[:<model id>]``.

    FD = ||mu_r - mu_f||^2 + Tr S_r + Tr S_f - 2 Tr((S_r S_f)^(1/2)),   S unbiased (N - 1)

One code path for every feature space: the value is FID's (:func:`difflens.metrics.values._fid_value`:
:func:`difflens.metrics.fid.fid_from_stats`, or the trace term from the features when a covariance is
singular), only the extractor and layer change. Registered: ``fd-clip`` (clean-fid's CLIP-FID, below) and
``sfid`` (:mod:`difflens.metrics.sfid`); ``fd-<name>`` resolves for any extractor of the features registry,
built in or registered with :func:`difflens.features.register_extractor` (``fd-inception`` is FID,
``fd-mynet:<model id>`` passes the model id to the factory). ``fd-dinov2`` stays the embedding group's.

State per side: float64 sums of the rows and of their outer products about a shift
(:class:`~difflens.metrics.gaussian_side.GaussianSide`: mergeable by addition, the Gram updated in place),
plus the float32 rows while a side has at most ``4 D`` of them (the singular-covariance
route, as :class:`~difflens.metrics.streaming.FidMetric`) or, for the fake side, always when constructed
with ``bootstrap > 0`` (the interval resamples the fake rows). A side may instead come from statistics
(:meth:`FrechetMetric.load_side_stats`: ``mu``/``sigma``, ``n`` when known).

``fd-clip`` follows clean-fid's CLIP-FID (``model_name="clip_vit_b_32"``, cleanfid/fid.py and
cleanfid/clip_features.py, clean-fid 0.1.35): OpenAI CLIP ViT-B/32 and its ``encode_image`` output, the
projected image embedding, 512-d, not normalized; that is transformers' ``CLIPModel.get_image_features``,
the ``image_embeds`` layer of the ``clip`` extractor (``clip:openai/clip-vit-base-patch32``). Preprocessing:
clean-fid resizes the uint8 image with torchvision ``Resize(224, BICUBIC)`` (PIL) and ``CenterCrop(224)``,
then ``/255`` and OpenAI's mean/std; the ``clip`` extractor's CLIPProcessor (transformers 5) does the same
geometry and normalization: measured on a 400x300 image, its pixel values equal clean-fid's except for rare
pixels one uint8 level apart (mean difference 1.4e-5 in normalized units).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch, Metric, MetricResult, Requirement, metric_key
from difflens.metrics.config import DEFAULT_FD_CLIP_MODEL, DEFAULT_SEED
from difflens.metrics.gaussian_side import GaussianSide
from difflens.metrics.streaming import Rows

SIDES = ("real", "fake")
#: The layer ``fd-<extractor>`` reads when none is given (a user's extractor: its class's first layer).
DEFAULT_LAYERS = {"inception": "pool3", "inception-clean": "pool3", "clip": "image_embeds",
                  "clip-cmmd": "image_embeds", "dinov2": "cls", "vae": "mid"}


def default_layer(extractor: str) -> str:
    """The layer of ``extractor`` that ``fd-<extractor>`` reads: the built-in table, else the ``layers``
    class attribute of a user's factory (an :class:`~difflens.features.base.ExtractorBase` subclass)."""
    from difflens.features.registry import _factory, split_name

    base, _ = split_name(extractor)
    if base in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[base]
    factory, _fixed = _factory(base)  # a DifflensError for an unknown name
    layers = getattr(factory, "layers", None)
    if isinstance(layers, (tuple, list)) and layers and isinstance(layers[0], str):
        return str(layers[0])
    raise DifflensError(f"fd-{extractor}: cannot tell which layer of extractor {base!r} to read (its factory "
                        "declares no layers).",
                        f"pass the layer as a metric option, e.g. metric_options={{'fd-{extractor}': "
                        "{'layer': '<layer>'}}")


def side_name(real: bool) -> str:
    return "real" if real else "fake"


INCEPTION_EXTRACTORS = ("inception", "inception-clean")


def build_with_inception_options(metric: Metric, device: str | None, offline: bool) -> dict[str, Any]:
    """``metric.build_extractors``: the registry's extractors, the Inception ones with the metric's
    ``inception_weights`` (a file, as ``--inception-weights``) and ``inception_impl`` (``--inception-impl``)
    when given."""
    from difflens.features.registry import get_extractor, split_name

    weights, impl = getattr(metric, "inception_weights", None), getattr(metric, "inception_impl", None)

    out = {}
    for req in metric.requirements():
        opts: dict[str, Any] = {}
        if split_name(req.extractor)[0] in INCEPTION_EXTRACTORS:
            opts = {k: v for k, v in (("weights", weights), ("impl", impl)) if v is not None}
        out[req.extractor] = get_extractor(req.extractor, device=device, offline=offline, **opts)
    return out


def with_run_options(names: Any, options: dict[str, dict[str, Any]] | None, weights: Any, impl: str | None,
                     seed: int | None = None, bootstrap: int = 0) -> dict[str, dict[str, Any]]:
    """``metric_options`` with the run's settings added (unless set) for each metric of ``names`` whose class
    takes them: ``inception_weights`` / ``inception_impl`` (fd-<inception>, sfid, fid-inf, vendi), so
    ``--inception-weights`` reaches them as it reaches FID; ``seed`` (``--seed``: fid-inf's subsets); and
    ``bootstrap`` when > 0 (``--bootstrap``: the Frechet metrics then keep the fake rows for the interval)."""
    import inspect

    from difflens.metrics.base import metric_spec

    out = {k: dict(v) for k, v in (options or {}).items()}
    for name in names:
        params = inspect.signature(metric_spec(name).load().__init__).parameters
        opts = out.setdefault(name, {})
        if "inception_weights" in params:
            opts.setdefault("inception_weights", None if weights is None else str(weights))
            opts.setdefault("inception_impl", impl)
        if "seed" in params and seed is not None:
            opts.setdefault("seed", int(seed))
        if "bootstrap" in params and bootstrap > 0:
            opts.setdefault("bootstrap", int(bootstrap))
        if not opts:
            del out[name]
    return out


def frechet_value(real: Any, fake: Any, real_rows: np.ndarray | None, fake_rows: np.ndarray | None) -> float:
    """FID's value function on two GaussianStats (and the rows when every row of both sides is at hand)."""
    from difflens.metrics.values import _fid_value

    if real.dim != fake.dim:
        raise DifflensError(f"feature dimensions differ: real {real.dim}, fake {fake.dim}.",
                            "compare features (or statistics) of the same extractor and layer")
    return float(_fid_value(real, fake, real_rows, fake_rows))


class FrechetMetric(Metric):
    """Frechet distance between the Gaussians of two feature sets, on ``layer`` of ``extractor``."""

    name = "fd"
    keys = ("fd",)
    group = "features"
    #: names of the mean and covariance in a statistics file (sFID: ``mu_s``/``sigma_s``)
    stats_keys: ClassVar[tuple[str, str]] = ("mu", "sigma")
    ROWS_PER_DIM: ClassVar[int] = 4

    def __init__(self, extractor: str = "inception", layer: str | None = None, seed: int = DEFAULT_SEED,
                 bootstrap: int = 0, inception_weights: str | None = None,
                 inception_impl: str | None = None) -> None:
        self.inception_weights, self.inception_impl = inception_weights, inception_impl
        self.extractor = str(extractor)
        self.layer = layer or default_layer(self.extractor)
        if type(self).name == FrechetMetric.name:  # the generic class: named by its extractor
            self.name = f"fd-{self.extractor}"  # type: ignore[misc]
            self.keys = (metric_key(self.name),)  # type: ignore[misc]
        self.seed, self.bootstrap = int(seed), int(bootstrap)
        self.sides = {s: GaussianSide() for s in SIDES}
        self.rows = {s: Rows() for s in SIDES}

    def requirements(self) -> tuple[Requirement, ...]:
        return (Requirement(self.extractor, self.layer, "both"),)

    def build_extractors(self, device: str | None, offline: bool) -> dict[str, Any]:
        return build_with_inception_options(self, device, offline)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor, "layer": self.layer, "seed": self.seed,
                "bootstrap": self.bootstrap}

    # ------------------------------------------------------------------------------------------ state

    def update(self, batch: FeatureBatch) -> None:
        side = side_name(batch.real)
        arr = np.asarray(batch.features[(self.extractor, self.layer)], dtype=np.float32)
        if arr.ndim != 2:
            raise DifflensError(f"{self.name}: features must be (N, D), got shape {arr.shape}.",
                                "pass one row per image")
        if not len(arr):
            return
        self.sides[side].add(arr)
        self._keep(side, arr)

    def _keep(self, side: str, arr: np.ndarray) -> None:
        n = self.sides[side].count
        if n <= self.ROWS_PER_DIM * arr.shape[1] or (side == "fake" and self.bootstrap > 0):
            self.rows[side].add(arr)
        else:
            self.rows[side].clear()  # the statistics alone carry the value

    def _complete(self, side: str) -> np.ndarray | None:
        """The side's rows when every row it was fed is kept (else None)."""
        arr = self.rows[side].array()
        return arr if arr is not None and len(arr) == self.sides[side].count else None

    def merge(self, other: Metric) -> None:
        self.check_mergeable(other)
        assert isinstance(other, FrechetMetric)
        for side in SIDES:
            keep = (self.sides[side].empty or self._complete(side) is not None) and \
                other._complete(side) is not None
            self.sides[side].merge(other.sides[side])
            if keep:
                self._keep(side, other.rows[side].array().copy())  # type: ignore[union-attr]
            elif not other.sides[side].empty:
                self.rows[side].clear()

    def reset(self, keep_real: bool = False) -> None:
        for side in ("fake",) if keep_real else SIDES:
            self.sides[side].clear()
            self.rows[side].clear()

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side in SIDES:
            out.update(self.sides[side].state(side))
            arr = self.rows[side].array()
            out[f"{side}_features"] = np.zeros((0, 0), np.float32) if arr is None else arr
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for side in SIDES:
            self.sides[side].load(state, side)
            self.rows[side].load(np.asarray(state[f"{side}_features"], dtype=np.float32))

    def load_side_stats(self, real: bool, stats: dict[str, np.ndarray],
                        fingerprint: dict[str, Any] | None = None) -> None:
        """Take one side from statistics (``stats_keys``, e.g. ``mu``/``sigma``; ``n`` if recorded) instead
        of images; ``fingerprint`` (the file's protocol, or None) is kept with the state."""
        side = side_name(real)
        self.sides[side].load_stats(stats, self.stats_keys, fingerprint, f"{self.name} --{side} statistics")
        self.rows[side].clear()

    # ---------------------------------------------------------------------------------------- compute

    def _stats(self) -> tuple[Any, Any]:
        sr, sf = self.sides["real"].stats, self.sides["fake"].stats
        if sr is None or sf is None:
            raise DifflensError(f"{self.name}: no {'real' if sr is None else 'fake'} images were given.",
                                "call update(images, real=True) and update(images, real=False) first")
        return sr, sf

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:
        sr, sf = self._stats()
        rf, ff = self._complete("real"), self._complete("fake")
        value = frechet_value(sr, sf, rf, ff)
        key = self.keys[0]
        res = MetricResult(key, value, {}, {"n_real": sr.n if sr.known_n else None, "n_fake": int(sf.n)})
        label = self.name
        singular = [f"n_{s}={st.n}" for s, st in (("real", sr), ("fake", sf)) if 0 <= st.n <= st.dim]
        if singular:
            res.warnings.append(f"{label}: {', '.join(singular)} <= feature dimension {sr.dim}: the "
                                "covariance is singular (the distance is defined but especially noisy)")
        boot = context.bootstrap if context is not None and context.bootstrap else self.bootstrap
        seed = context.seed if context is not None and context.bootstrap else self.seed
        if boot > 0:
            if ff is None:
                res.warnings.append(f"{label}: no interval: the fake rows were not kept (more than "
                                    f"{self.ROWS_PER_DIM} x D of them); construct the metric with "
                                    "bootstrap=B")
            else:
                res.fields["ci95"] = list(bootstrap_ci95(sr, ff, boot, seed))
        return {key: res}


def bootstrap_ci95(real: Any, fake_rows: np.ndarray, num: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the distance over ``num`` resamples (with replacement) of the fake rows."""
    from difflens.metrics.feature_cache import percentile_ci95, resample_indices
    from difflens.metrics.fid import fid_from_stats
    from difflens.metrics.stats import GaussianStats

    fake = np.asarray(fake_rows, dtype=np.float64)
    vals = [fid_from_stats(real, GaussianStats.from_features(fake[idx]))
            for idx in resample_indices(len(fake), num, seed)]
    return percentile_ci95(vals)


class FdClipMetric(FrechetMetric):
    """``fd-clip``: clean-fid's CLIP-FID, the Frechet distance on CLIP ViT-B/32 projected image embeddings
    (512-d, not normalized; see the module docstring)."""

    name = "fd-clip"
    keys = ("fd_clip",)

    def __init__(self, clip_model: str = DEFAULT_FD_CLIP_MODEL, seed: int = DEFAULT_SEED,
                 bootstrap: int = 0) -> None:
        self.clip_model = str(clip_model)
        super().__init__(f"clip:{self.clip_model}", "image_embeds", seed, bootstrap)
