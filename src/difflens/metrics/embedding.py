"""CLIP score, CMMD and FD-DINOv2 in one call (``difflens metrics --metrics clip,cmmd,fd-dinov2``).

One feature pass per (extractor, preprocessing, set): CLIP score and CMMD share :class:`ClipEncoder`
(:mod:`difflens.metrics.clip`) when they use the same model; CMMD's math is :mod:`difflens.metrics.cmmd`,
FD-DINOv2's :mod:`difflens.metrics.dinov2`. Kept apart from ``clip.py`` so that ``cmmd`` -> ``clip`` is the
only direction between those two modules (no import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difflens.config import RUNTIME
from difflens.errors import DifflensError
from difflens.metrics.base import metric_names, metric_spec
from difflens.metrics.clip import (
    PROTOCOL_CMMD,
    PROTOCOL_PROCESSOR,
    ClipEncoder,
    compute_clip_score,
)
from difflens.metrics.config import (
    DEFAULT_CMMD_CLIP_MODEL,
    DEFAULT_DINOV2_MODEL,
    EmbeddingConfig,
    MetricsConfig,
)
from difflens.metrics.feature_cache import FeatureCache, NoCache, inputs_digest

_E, _M = EmbeddingConfig(), MetricsConfig()  # the defaults

#: ``--metrics`` names of the CLIP/DINOv2 metrics and their JSON keys.
EMBEDDING_METRICS: dict[str, str] = {n: metric_spec(n).keys[0] for n in metric_names("embedding")}


def parse_embedding_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"clip,cmmd"`` -> ``("clip", "cmmd")``; unknown names are an error. Aliases (clip_score, fd_dinov2,
    ...) and order come from the one registry, :func:`difflens.metrics.base.resolve_metrics`."""
    from difflens.metrics.base import resolve_metrics

    return resolve_metrics(spec, "embedding")


def compute_embedding_metrics(
    metrics: str | Sequence[str], *, fake: Sequence[Any] | None, real: Sequence[Any] | None = None,
    prompts: Sequence[str] | None = None, clip_model: str = _E.clip_model,
    cmmd_clip_model: str | None = _E.cmmd_clip_model, dinov2_model: str | None = _E.dinov2_model,
    per_prompt: bool = _E.per_prompt, lowest: int = 10, bootstrap: int = _M.bootstrap, seed: int = _M.seed,
    device: str | None = RUNTIME.device, dtype: str = RUNTIME.dtype, offline: bool = RUNTIME.offline,
    cache: FeatureCache | None = None, batch_size: int = _E.batch_size,
) -> dict[str, Any]:
    """CLIP score, CMMD and FD-DINOv2 in one call: one feature pass per (extractor, preprocessing, set).

    ``fake``/``real``: sequences of image paths, PIL images or uint8 (H, W, 3) arrays (a uint8 (N, H, W, 3)
    array works too). ``prompts``: one per fake image (CLIP score). Validates everything before loading a
    model. Returns ``{"metrics": {"clip_score": {"value", ["ci95"]}, "cmmd": {...}, "fd_dinov2": {...}},
    "per_prompt": {...} (with ``per_prompt``), "protocol": {key: {model, weights_sha256, preprocessing,
    dtype}}, "warnings": [...]}``. ``ci95`` comes from resampling the fake set (``bootstrap`` > 0).
    """
    from difflens.metrics.cmmd import cmmd_from_embeddings
    from difflens.metrics.dinov2 import Dinov2Encoder, fd_with_bootstrap

    chosen = parse_embedding_metrics(metrics)
    cmmd_clip_model = cmmd_clip_model or DEFAULT_CMMD_CLIP_MODEL
    dinov2_model = dinov2_model or DEFAULT_DINOV2_MODEL
    n_fake = 0 if fake is None else len(fake)
    if n_fake == 0:
        raise DifflensError("no generated images to evaluate.", "pass --fake, or --model with --prompts")
    if "clip" in chosen:
        if prompts is None:
            raise DifflensError("--metrics clip needs a prompt for each generated image.",
                                "evaluate a difflens generate folder (it has a manifest), or pass --prompts")
        if len(prompts) != n_fake:
            raise DifflensError(f"{n_fake} generated images but {len(prompts)} prompts.",
                                "give one prompt per image (a prompts file cycled in file order), or use a "
                                "generation folder with a manifest")
    if per_prompt and "clip" not in chosen:
        raise DifflensError("--per-prompt breaks down the CLIP score, which is not among --metrics.",
                            "add clip to --metrics")
    needs_real = [m for m in chosen if m in ("cmmd", "fd-dinov2")]
    if needs_real and (real is None or len(real) == 0):
        raise DifflensError(f"--metrics {','.join(needs_real)} needs reference images.", "pass --real FOLDER")
    if "fd-dinov2" in chosen and (n_fake < 2 or len(real or []) < 2):
        raise DifflensError("FD-DINOv2 needs at least 2 images on each side.", "add images")
    if bootstrap < 0:
        raise DifflensError(f"--bootstrap must be at least 0, got {bootstrap}.", "pass --bootstrap 0 or more")

    cache = cache or NoCache()
    out: dict[str, Any] = {"metrics": {}, "protocol": {}, "warnings": []}
    fake = fake if isinstance(fake, list) else list(fake)  # type: ignore[arg-type]  # read once (streams)
    real = real if real is None or isinstance(real, list) or not needs_real else list(real)
    fake_digest = inputs_digest(fake)
    real_digest = inputs_digest(real) if needs_real and real is not None else None
    encoders: dict[str, ClipEncoder] = {}

    def clip_encoder(model_id: str, flag: str) -> ClipEncoder:
        if model_id not in encoders:
            encoders[model_id] = ClipEncoder.load(model_id, device=device, dtype=dtype, offline=offline,
                                                  flag=flag)
        return encoders[model_id]

    def record(key: str, model_id: str, digest: str, preprocessing: dict[str, Any]) -> None:
        name = preprocessing.get("protocol", "dinov2-bicubic")  # CLIP: processor / cmmd-resize
        out["protocol"][key] = {"protocol": name, "model": model_id, "weights_sha256": digest,
                                "preprocessing": preprocessing, "dtype": dtype}

    # Features: one pass of the extraction loop per image set feeds every extractor the chosen metrics
    # need (each image decoded once); the metrics below read them from the cache.
    from difflens.features.cached import PrefetchedCache, prefetch
    from difflens.features.clip import Clip
    from difflens.features.dinov2 import Dinov2

    cache = PrefetchedCache(cache)
    dino = (Dinov2Encoder.load(dinov2_model, device=device, dtype=dtype, offline=offline)
            if "fd-dinov2" in chosen else None)
    fake_jobs: list[Any] = []
    real_jobs: list[Any] = []
    if "clip" in chosen:
        fake_jobs.append(Clip(clip_encoder(clip_model, "--clip-model"), PROTOCOL_PROCESSOR))
    if "cmmd" in chosen:
        cmmd_ext = Clip(clip_encoder(cmmd_clip_model, "--cmmd-clip-model"), PROTOCOL_CMMD)
        fake_jobs.append(cmmd_ext)
        real_jobs.append(cmmd_ext)
    if dino is not None:
        fake_jobs.append(Dinov2(dino))
        real_jobs.append(fake_jobs[-1])
    prefetch(fake, fake_digest, fake_jobs, cache, batch_size, label="fake")  # type: ignore[arg-type]
    if real_jobs and real is not None and real_digest is not None:
        prefetch(real, real_digest, real_jobs, cache, batch_size, label="real")

    if "clip" in chosen:
        enc = clip_encoder(clip_model, "--clip-model")
        res = compute_clip_score(fake, list(prompts or []), encoder=enc, cache=cache,
                                 images_digest=fake_digest, batch_size=batch_size, per_prompt=per_prompt,
                                 lowest=lowest, bootstrap=bootstrap, seed=seed)
        out["metrics"]["clip_score"] = res.to_dict()
        if res.per_prompt is not None:
            out["per_prompt"] = res.per_prompt.to_dict()
        if res.truncated_prompts:
            out["warnings"].append(f"CLIP score: {res.truncated_prompts} prompt(s) longer than "
                                   f"{enc.max_text_tokens} tokens were truncated for the text encoder")
        record("clip_score", enc.model_id, enc.weights_digest, enc.preprocessing(PROTOCOL_PROCESSOR))
    if "cmmd" in chosen:
        enc = clip_encoder(cmmd_clip_model, "--cmmd-clip-model")
        x = enc.image_features(real, PROTOCOL_CMMD, cache, real_digest, batch_size)  # type: ignore[arg-type]
        y = enc.image_features(fake, PROTOCOL_CMMD, cache, fake_digest, batch_size)
        out["metrics"]["cmmd"] = cmmd_from_embeddings(x, y, bootstrap=bootstrap, seed=seed,
                                                      device=enc.device).to_dict()
        record("cmmd", enc.model_id, enc.weights_digest,
               {**enc.preprocessing(PROTOCOL_CMMD), "sigma": 10.0, "scale": 1000.0})
    if dino is not None:
        x = dino.image_features(real, cache, real_digest, batch_size)  # type: ignore[arg-type]
        y = dino.image_features(fake, cache, fake_digest, batch_size)
        out["metrics"]["fd_dinov2"] = fd_with_bootstrap(x, y, bootstrap, seed).to_dict()
        record("fd_dinov2", dino.model_id, dino.weights_digest, dino.preprocessing())
        dim = x.shape[1]
        for name, n in (("real", len(x)), ("fake", len(y))):
            if n <= dim:
                out["warnings"].append(f"FD-DINOv2: the {name} set has {n} samples, not more than the "
                                       f"feature dimension {dim}: its covariance is singular")
    if bootstrap:
        out["warnings"].append(f"bootstrap: {bootstrap} resamples of the generated set (with replacement); "
                               "CMMD and FD intervals are biased upward by duplicated samples")
    return out
