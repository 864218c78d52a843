"""The metric interface and the ONE metric registry (names and aliases).

A metric is a mergeable accumulator (DESIGN.md 2.1): it declares the extractor layers it needs
(:class:`Requirement`), takes :class:`FeatureBatch`es in :meth:`Metric.update`, combines with another
instance of itself in :meth:`Metric.merge` (shards, ranks), and turns its state into one or more
:class:`MetricResult`s in :meth:`Metric.compute` (``pr`` gives ``precision`` and ``recall``). Its state
round-trips through :meth:`Metric.state_dict` / :meth:`Metric.load_state_dict` as plain numpy arrays and
JSON numbers (saved as ``.npz`` + JSON by :class:`~difflens.metrics.evaluator.Evaluator`; no pickle).

Registry: ``fid``, ``kid``, ``is``, ``pr``, ``dc`` (the Inception group) and ``clip``, ``cmmd``,
``fd-dinov2`` (the embedding group), ``fd-clip``, ``sfid``, ``fid-inf``, ``vendi`` (the features group,
run by :mod:`difflens.metrics.route`; ``fd-<extractor>[:<model id>]`` resolves for any registered
extractor), each with its aliases (:data:`ALIASES`). :func:`resolve_metrics`
is the one parser every entry point calls (``--metrics``, ``compute_metrics``, the Evaluator).
Light at import: the standard library only; metric classes are imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from difflens.errors import DifflensError

SideName = Literal["real", "fake", "both"]
Group = Literal["inception", "embedding", "features"]  # features: run by metrics/route.py
LayerKey = tuple[str, str]  # (extractor name, layer)


@dataclass(frozen=True)
class Requirement:
    """What a metric reads: ``layer`` of ``extractor`` (a features registry name), on which ``sides``,
    and whether it needs one prompt per (fake) image."""

    extractor: str
    layer: str
    sides: SideName = "both"
    prompts: bool = False

    @property
    def key(self) -> LayerKey:
        return (self.extractor, self.layer)

    def wants(self, real: bool) -> bool:
        return self.sides == "both" or self.sides == ("real" if real else "fake")


@dataclass
class FeatureBatch:
    """One batch of one side: ``features[(extractor, layer)] -> (N, D)`` for the rows of this batch,
    the batch's prompts (one per row, fake side) and the text features of those prompts
    (``text_features[(extractor, "text_embeds")]``) where a metric asked for prompts."""

    real: bool
    features: dict[LayerKey, Any]
    prompts: list[str] | None = None
    text_features: dict[LayerKey, Any] | None = None


@dataclass
class MetricResult:
    """One published value: ``{"value": value, **fields, **counts}`` in the JSON (see
    :mod:`difflens.metrics.record`), plus the warnings that qualify it."""

    key: str
    value: float | None
    fields: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, **self.fields, **self.counts}


class Metric:
    """Base class of every metric: subclasses set the class attributes and implement the methods.

    ``permutation_invariant``: whether reordering the rows of a side leaves :meth:`compute` unchanged
    (False for seeded subsets/splits such as KID and IS); the property harness checks it where True.
    """

    name: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[Group] = "inception"
    permutation_invariant: ClassVar[bool] = True

    def requirements(self) -> tuple[Requirement, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, batch: FeatureBatch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def merge(self, other: Metric) -> None:  # pragma: no cover - abstract
        """Fold ``other`` (the same metric, same settings) into ``self``; ``self``'s rows come first."""
        raise NotImplementedError

    def compute(self, context: ComputeContext | None = None) -> dict[str, MetricResult]:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """Plain state: numpy arrays, ints, floats, strings and lists of strings only."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self, keep_real: bool = False) -> None:  # pragma: no cover - abstract
        """Forget the fake side (and the real side unless ``keep_real``)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The settings that change this metric's value (compared before a merge or a load)."""
        return {}

    def build_extractors(self, device: str | None, offline: bool) -> dict[str, Any]:
        """The extractors of :meth:`requirements`, keyed by their registry names (override to pass
        options such as a checkpoint path)."""
        from difflens.features.registry import get_extractor

        return {r.extractor: get_extractor(r.extractor, device=device, offline=offline)
                for r in self.requirements()}

    def check_mergeable(self, other: Metric) -> None:
        if type(other) is not type(self) or other.settings() != self.settings():
            raise DifflensError(f"cannot merge metric {self.name!r} with {other.name!r} "
                                f"({self.settings()} vs {other.settings()}).",
                                "merge states of the same metric made with the same settings")


@dataclass
class ComputeContext:
    """What :meth:`Metric.compute` may need besides its state: every metric chosen in this run (shared
    warnings are then emitted once), the device for k-NN, and the warnings list to extend."""

    chosen: tuple[str, ...] = ()
    device: str | None = None
    warnings: list[str] = field(default_factory=list)
    bootstrap: int = 0  # B > 0: ci95 from B bootstrap resamples
    seed: int = 0  # seeds the resampling


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its class (``module:Class``, imported on first use), JSON keys and aliases."""

    name: str
    target: str
    keys: tuple[str, ...]
    group: Group
    aliases: tuple[str, ...] = ()
    meaning: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # constructor settings fixed by the name (fd-<extractor>)

    def load(self) -> type[Metric]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


_INC = "difflens.metrics.streaming"
_EMB = "difflens.metrics.streaming_embedding"
_FD = "difflens.metrics.frechet"
_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, overwrite: bool = False) -> None:
    """Add a metric to the registry (name and aliases must be new unless ``overwrite``)."""
    taken = {a: n for n, s in _REGISTRY.items() for a in (n, *s.aliases) if n != spec.name or not overwrite}
    clash = [a for a in (spec.name, *spec.aliases) if a in taken]
    if clash:
        raise DifflensError(f"metric name(s) {', '.join(clash)} already registered.",
                            "choose another name, or pass overwrite=True to replace your own metric")
    _REGISTRY[spec.name] = spec


for _spec in (
    MetricSpec("fid", f"{_INC}:FidMetric", ("fid",), "inception"),
    MetricSpec("kid", f"{_INC}:KidMetric", ("kid",), "inception"),
    MetricSpec("is", f"{_INC}:IsMetric", ("is",), "inception", ("isc",)),
    MetricSpec("pr", f"{_INC}:PrMetric", ("precision", "recall"), "inception",
               ("precision", "recall", "prc"), "precision+recall"),
    MetricSpec("dc", f"{_INC}:DcMetric", ("density", "coverage"), "inception", ("density", "coverage"),
               "density+coverage"),
    MetricSpec("clip", f"{_EMB}:ClipScoreMetric", ("clip_score",), "embedding", ("clip_score", "clip-score"),
               "CLIP score"),
    MetricSpec("cmmd", f"{_EMB}:CmmdMetric", ("cmmd",), "embedding"),
    MetricSpec("fd-dinov2", f"{_EMB}:FdDinov2Metric", ("fd_dinov2",), "embedding", ("fd_dinov2", "fddinov2")),
    MetricSpec("fd-clip", f"{_FD}:FdClipMetric", ("fd_clip",), "features", ("fd_clip", "clip-fid"),
               "Frechet distance on CLIP ViT-B/32 image embeddings (clean-fid's CLIP-FID)"),
    MetricSpec("sfid", "difflens.metrics.sfid:SfidMetric", ("sfid",), "features", (),
               "spatial FID (Inception mixed_6/conv, first 7 channels; ADM evaluator)"),
    MetricSpec("fid-inf", "difflens.metrics.fid_inf:FidInfMetric", ("fid_inf",), "features",
               ("fid_inf", "fid-infinity"), "FID extrapolated to infinitely many samples (Chong & Forsyth)"),
    MetricSpec("vendi", "difflens.metrics.vendi:VendiMetric", ("vendi",), "features", ("vendi-score",),
               "Vendi score (diversity of the generated set)"),
    MetricSpec("hpsv2", "difflens.metrics.hpsv2:Hpsv2Metric", ("hpsv2",), "features", ("hps",),
               "Human Preference Score v2 (100 * cos; needs prompts)"),
    MetricSpec("pickscore", "difflens.metrics.pickscore:PickScoreMetric", ("pickscore",), "features",
               ("pick-score", "pick_score"), "PickScore (logit_scale * cos; needs prompts)"),
    MetricSpec("imagereward", "difflens.metrics.imagereward:ImageRewardMetric", ("imagereward",), "features",
               ("image-reward", "image_reward"), "ImageReward (z-scored reward; needs prompts)"),
):
    register_metric(_spec)

#: alias -> registered name (every alias of every metric).
ALIASES: dict[str, str] = {a: s.name for s in _REGISTRY.values() for a in s.aliases}


def metric_names(group: Group | None = None) -> tuple[str, ...]:
    """Registered names (registration order), optionally of one group."""
    return tuple(n for n, s in _REGISTRY.items() if group is None or s.group == group)


def metric_spec(name: str) -> MetricSpec:
    key = _alias(_normalize(name))
    if key not in _REGISTRY:
        raise DifflensError(f"unknown metric {name!r}.", f"choose from {','.join(metric_names())}")
    return _REGISTRY[key]


def _alias(name: str) -> str:
    for spec in _REGISTRY.values():
        if name in spec.aliases:
            return spec.name
    return _frechet_on(name)


def _normalize(name: str) -> str:
    """Lower case, except a ``:<model id>`` suffix (``fd-clip:<id>``; local paths are case-sensitive)."""
    base, sep, model_id = name.strip().partition(":")
    return base.strip().lower() + (sep + model_id.strip() if sep else "")


def metric_key(name: str) -> str:
    """The JSON key of a metric name: ``fd-clip`` -> ``fd_clip`` (runs of other characters -> ``_``)."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _frechet_on(name: str) -> str:
    """``fd-<extractor>[:<model id>]`` for any registered extractor (built in or registered with
    :func:`difflens.features.register_extractor`): registered on first use as the generic
    :class:`~difflens.metrics.frechet.FrechetMetric` on that extractor (group ``features``)."""
    if name in _REGISTRY or not name.startswith("fd-"):
        return name
    from difflens.features.registry import extractor_names, split_name

    if split_name(name[3:])[0] not in extractor_names():
        return name
    register_metric(MetricSpec(name, f"{_FD}:FrechetMetric", (metric_key(name),), "features", (),
                               f"Frechet distance on {name[3:]}", (("extractor", name[3:]),)))
    return name


def resolve_metrics(spec: str | Iterable[str], group: Group | None = None,
                    message: str = "unknown metric(s)") -> tuple[str, ...]:
    """``"fid,precision"`` or ``["fid", "pr"]`` -> registered names, aliases resolved, duplicates removed,
    in registry order. Unknown (or, with ``group``, foreign) or no names: DifflensError (``message`` is
    its start; the hint lists the allowed names)."""
    items = [_normalize(s) for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [_alias(s) for s in items if s]
    allowed = metric_names(group)
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise DifflensError(f"{message}: {', '.join(bad) or '(empty)'}.", f"choose from {','.join(allowed)}")
    return tuple(m for m in allowed if m in items)


def split_by_group(spec: str | Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Inception metrics, embedding metrics) of a mixed list; unknown names are one DifflensError."""
    names = resolve_metrics(spec, None, "unknown metric(s) among")
    return (tuple(n for n in names if _REGISTRY[n].group == "inception"),
            tuple(n for n in names if _REGISTRY[n].group == "embedding"))


def create_metric(name: str, **settings: Any) -> Metric:
    """A fresh instance of metric ``name`` (or alias) with ``settings`` (see each class)."""
    spec = metric_spec(name)
    return spec.load()(**{**dict(spec.options), **settings})


def metric_meanings() -> dict[str, str]:
    """What the short names stand for (help text)."""
    return {n: s.meaning for n, s in _REGISTRY.items() if s.meaning}


# ------------------------------------------------------------------------------------------ state files


def split_state(state: dict[str, Any], where: str = "state") -> tuple[dict[str, Any], dict[str, Any]]:
    """A state dict as (numpy arrays for an ``.npz``, JSON values): no pickle anywhere. Anything else
    (objects, nested dicts) is a DifflensError naming the entry."""
    import numpy as np

    arrays: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for key, val in state.items():
        if isinstance(val, np.ndarray):
            if val.dtype == object:
                raise DifflensError(f"{where}: {key!r} is an object array (needs pickle).",
                                    "store numbers or strings")
            arrays[key] = val
        elif isinstance(val, (bool, int, float, str)) or val is None or (
                isinstance(val, list) and all(isinstance(v, (str, int, float)) for v in val)):
            plain[key] = val
        else:
            raise DifflensError(f"{where}: {key!r} is a {type(val).__name__}, not an array, number or "
                                "string.",
                                "state_dict() must return plain arrays and numbers")
    return arrays, plain


def join_state(arrays: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`split_state`."""
    return {**plain, **arrays}
