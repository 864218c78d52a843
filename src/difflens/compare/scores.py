"""Per-image scores of both sample sets, for every metric a comparison can use.

* ``clip``: the CLIP score of each image against its prompt, ``100 * max(cos(E_img, E_txt), 0)``
  (:func:`difflens.metrics.clip.clip_scores`, the CLIP model's own preprocessing);
* every registered metric whose class is a :class:`~difflens.metrics.per_image.PerImageScoreMetric`
  (HPSv2, PickScore, ImageReward, ...): run by the generic route (:func:`difflens.metrics.route.accumulate`)
  and read back with ``per_image()``.

A and B go through each model in ONE pass (A's images, then B's): the model is loaded once and both sets see
the same weights, preprocessing and batch settings. Names are checked (:func:`choose_metrics`) before any
model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

CLIP = "clip"


@dataclass(frozen=True)
class Chosen:
    """A metric a comparison runs: its registry name, JSON key and human label."""

    name: str
    key: str
    label: str


@dataclass
class Scores:
    """Per-image scores of A's and B's images (in their order) for one metric, and how they were made."""

    chosen: Chosen
    a: Any
    b: Any
    fingerprint: dict[str, Any] = field(default_factory=dict)


def per_image_metric_names() -> tuple[str, ...]:
    """Registered metrics that give one score per image (imports each class, not its network)."""
    from difflens.metrics.base import metric_names, metric_spec
    from difflens.metrics.per_image import PerImageScoreMetric

    out = []
    for name in metric_names("features"):
        try:
            cls = metric_spec(name).load()
        except ImportError:  # pragma: no cover - a registered module that cannot import: not offered
            continue
        if isinstance(cls, type) and issubclass(cls, PerImageScoreMetric):
            out.append(name)
    return tuple(out)


def choose_metrics(spec: str) -> tuple[Chosen, ...]:
    """``--metrics`` of a comparison: ``clip`` and the per-image score metrics, aliases resolved, in the
    order given; anything else is one DifflensError naming the allowed names."""
    from difflens.metrics.base import ALIASES, metric_names, metric_spec

    allowed = (CLIP, *per_image_metric_names())
    items = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
    hint = f"choose from {','.join(allowed)} (metrics with one score per image)"
    if not items:
        raise DifflensError("--metrics is empty.", hint)
    out: list[Chosen] = []
    for item in items:
        name = ALIASES.get(item, item)
        if name not in metric_names():
            raise DifflensError(f"unknown metric {item!r} in --metrics.", hint)
        if name not in allowed:
            raise DifflensError(f"--metrics {item}: {name} is not a per-image score (a comparison pairs one "
                                "score per image, prompt by prompt).", hint)
        if any(c.name == name for c in out):
            continue
        spec_ = metric_spec(name)
        if name == CLIP:
            out.append(Chosen(CLIP, "clip_score", "CLIP score"))
        else:
            cls = spec_.load()
            out.append(Chosen(name, spec_.keys[0], str(getattr(cls, "label", "") or name)))
    return tuple(out)


def clip_per_image(files: list[Path], prompts: list[str], *, clip_model: str, device: str | None,
                   offline: bool, batch_size: int) -> tuple[Any, dict[str, Any]]:
    """CLIP score of each image against its prompt (float64) and the extractor's fingerprint."""
    from difflens.features.clip import PROTOCOL_PROCESSOR, Clip, ClipEncoder
    from difflens.metrics.clip import clip_scores

    enc = ClipEncoder.load(clip_model, device=device, offline=offline)
    images = enc.encode_images(files, PROTOCOL_PROCESSOR, batch_size=batch_size, show_progress=True)
    texts, _ = enc.text_features(list(prompts))
    return clip_scores(images, texts), Clip(enc, PROTOCOL_PROCESSOR).fingerprint().to_dict()


def score_sets(chosen: tuple[Chosen, ...], files_a: list[Path], prompts_a: list[str], files_b: list[Path],
               prompts_b: list[str], *, clip_model: str, metric_options: dict[str, dict[str, Any]] | None,
               device: str | None, offline: bool, batch_size: int,
               warnings: list[str]) -> list[Scores]:
    """Scores of A's and B's images for every chosen metric (A's rows first, then B's, in one pass)."""
    import numpy as np

    files = [*files_a, *files_b]
    prompts = [*prompts_a, *prompts_b]
    n_a = len(files_a)
    out: list[Scores] = []
    registered = [c.name for c in chosen if c.name != CLIP]
    routed: dict[str, tuple[Any, dict[str, Any]]] = {}
    if registered:
        from difflens.metrics.route import accumulate

        # every image is readable (screened by compare.inputs), so strict keeps the rows aligned
        acc = accumulate(registered, None, files, prompts=prompts, metric_options=metric_options,
                         device=device, offline=offline, batch_size=batch_size, strict=True,
                         show_progress=True)
        warnings += [w for w in acc.warnings if w not in warnings]
        for name in registered:
            metric = acc.metrics[name]
            scores, got = metric.per_image()  # type: ignore[attr-defined]
            if list(got) != prompts:
                raise DifflensError(f"{name}: the scores came back for {len(got)} images, not the "
                                    f"{len(prompts)} given in order.", "report this as a difflens bug")
            used = sorted({r.extractor for r in metric.requirements()})
            routed[name] = (scores, {e: acc.fingerprints.get(e, {}) for e in used})
    for c in chosen:
        if c.name == CLIP:
            scores, fp = clip_per_image(files, prompts, clip_model=clip_model, device=device, offline=offline,
                                        batch_size=batch_size)
        else:
            scores, fp = routed[c.name]
        scores = np.asarray(scores, dtype=np.float64)
        out.append(Scores(c, scores[:n_a], scores[n_a:], fp))
    return out
