"""One entry point for `difflens metrics`: resolve named datasets and published statistics, generate
samples from a model when asked (resumable), then run the Inception metrics and the embedding metrics
(CLIP score, CMMD, FD-DINOv2) and merge them into one result.

The pieces live elsewhere (generate.api, refsets, metrics.api, metrics.clip); this module only decides
which of them a request needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.metrics.config import DatasetOptions, EmbeddingConfig, GenerationRequest, MetricsConfig

_M, _E = MetricsConfig(), EmbeddingConfig()  # the defaults


def split_metrics(spec: str | Sequence[str] | None) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(Inception metrics or None for "all the inputs allow", embedding metrics): the one registry's
    :func:`difflens.metrics.base.split_by_group` (names and aliases of every metric)."""
    from difflens.metrics.base import split_by_group

    if spec is None:
        return None, ()
    return split_by_group(spec)


def features_metrics(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The chosen metrics of the ``features`` group (run by :mod:`difflens.metrics.route`)."""
    from difflens.metrics.base import metric_spec, resolve_metrics

    if spec is None:
        return ()
    return tuple(n for n in resolve_metrics(spec, None, "unknown metric(s) among")
                 if metric_spec(n).group == "features")


def _features_side(spec: Any, flag: str) -> Any:
    """``--real-features``/``--fake-features`` for the features-group metrics: Inception pool3 rows."""
    if spec is None:
        return None
    from difflens.metrics.route import Features
    from difflens.metrics.sources import resolve_source

    return Features(resolve_source(spec, flag, want_features=True).features)  # type: ignore[union-attr]


def resolve_reference(spec: Any, options: DatasetOptions, offline: bool,
                      strict: bool) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """A `stats:NAME` or dataset spec becomes statistics or a uint8 image array; anything else is passed
    through to compute_metrics. Returns (input, dataset identity or None, warnings)."""
    if not isinstance(spec, str):
        return spec, None, []
    from difflens.refsets.dataset_spec import is_dataset_spec
    from difflens.refsets.registry import is_stats_spec

    if is_stats_spec(spec):
        from difflens.refsets.registry import load_registry_stats

        stats, fingerprint, extra = load_registry_stats(spec, offline=offline)
        warnings = [str(w) for w in extra.get("warnings", [])] if isinstance(extra, dict) else []
        record = {"mu": stats.mean, "sigma": stats.covariance(), "n": stats.n}
        if fingerprint is not None:
            record["fingerprint"] = fingerprint
        return record, {"registry": spec}, warnings
    if is_dataset_spec(spec):
        from difflens.metrics.sources import ArraySource
        from difflens.refsets.dataset_source import open_image_source
        from difflens.refsets.dataset_stream import DatasetImages

        source = open_image_source(spec, image_column=options.image_column, num=options.num_real,
                                   subset_seed=options.subset_seed, reference_size=options.reference_size,
                                   offline=offline, streaming=options.streaming, strict=strict)
        identity = {"identity": source.identity, "preprocessing": source.preprocessing}
        # streamed through the extraction loop, never materialized; its read warnings come after the read
        return ArraySource(images=DatasetImages(source, spec)), identity, []
    return spec, None, []


def load_prompt_list(prompts: str | None, options: DatasetOptions, offline: bool) -> list[str] | None:
    if prompts is None:
        return None
    from difflens.refsets.dataset_spec import is_dataset_spec

    if is_dataset_spec(prompts):
        from difflens.refsets.dataset_source import load_prompts_from_dataset

        return load_prompts_from_dataset(prompts, options.caption_column or "caption", options.num_real,
                                         options.subset_seed, offline)
    from difflens.generate.prompts import load_prompts

    return load_prompts(prompts)


def _image_items(source: Any, flag: str = "--fake") -> Any:
    """Images for the embedding metrics: file lists, folders (listed) or uint8 arrays."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        from difflens.metrics.images import list_image_files

        return list_image_files(source)
    if isinstance(source, (str, Path)) and str(source).lower().endswith((".npy", ".npz")):
        from difflens.metrics.sources import resolve_source

        src = resolve_source(source, flag)
        if src.kind != "images":
            raise DifflensError(f"{flag} {source} holds {src.kind}, not images; CLIP score, CMMD and "
                                "FD-DINOv2 embed images.",
                                "pass a folder of images or a uint8 (N, H, W, 3) array")
        return src.images  # type: ignore[union-attr]
    if getattr(source, "kind", None) == "images":  # a dataset streamed as images (resolve_reference)
        return source.images
    return source


def _readable(items: Any, prompts: list[str] | None, flag: str, strict: bool,
              reported: bool) -> tuple[Any, list[str] | None, list[str]]:
    """Image files for the embedding metrics, less those unreadable or oversized (the one image rule of
    :mod:`difflens.metrics.images`: skipped with a warning, ``strict``: an error), with their prompts.
    ``reported``: the Inception pass read the same files and already warned about them."""
    if not isinstance(items, list) or not items or not all(isinstance(i, (str, Path)) for i in items):
        return items, prompts, []
    from difflens.metrics.images import ReadLog, readable_files

    log = ReadLog()
    kept = readable_files([Path(i) for i in items], log, strict, flag)
    if len(kept) == len(items):
        return items, prompts, []
    prompts = [prompts[i] for i in kept] if prompts is not None and len(prompts) == len(items) else prompts
    return [items[i] for i in kept], prompts, [] if reported else log.warnings(f"{flag} (embedding metrics)")


def evaluate(real: Any = None, fake: Any = None, metrics: str | Sequence[str] | None = None, *,
             prompts: str | None = None, generation: GenerationRequest | None = None,
             datasets: DatasetOptions | None = None, clip_model: str = _E.clip_model,
             cmmd_clip_model: str | None = _E.cmmd_clip_model, dinov2_model: str | None = _E.dinov2_model,
             per_prompt: bool = _E.per_prompt, offline: bool = False, strict: bool = _M.strict,
             device: str | None = None, real_features: Any = None, fake_features: Any = None,
             protocol: str = _M.protocol, inception_weights: str | Path | None = None,
             inception_impl: str = _M.inception_impl, batch_size: int = _M.batch_size, seed: int = _M.seed,
             kid_subset_size: int = _M.kid_subset_size,
             kid_subsets: int = _M.kid_subsets, is_splits: int = _M.is_splits, bootstrap: int = _M.bootstrap,
             allow_protocol_mismatch: bool = _M.allow_protocol_mismatch, save_stats: str | Path | None = None,
             save_real_stats: str | Path | None = None,
             save_fake_stats: str | Path | None = None,
             metric_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything `difflens metrics` can do, as a function. The Inception settings go to
    :func:`difflens.metrics.api.compute_metrics`; ``seed`` and ``bootstrap`` serve the embedding metrics too
    (one sampling seed, :data:`difflens.metrics.config.DEFAULT_SEED` by default, as on the command line).
    Metrics of the ``features`` group run through :mod:`difflens.metrics.route`, each built with
    ``metric_options[name]`` (e.g. ``{"hpsv2": {"checkpoint": "hps.pt"}}``)."""
    from difflens.metrics.api import compute_metrics

    datasets = datasets or DatasetOptions()
    inception, embedding = split_metrics(metrics)
    featured = features_metrics(metrics)
    if per_prompt and "clip" not in embedding:
        raise DifflensError("--per-prompt breaks down the CLIP score, which is not among --metrics.",
                            "add clip to --metrics")
    warnings: list[str] = []
    real_input, real_identity, w = resolve_reference(real, datasets, offline, strict)
    warnings += w
    prompt_list = load_prompt_list(prompts, datasets, offline)
    fake_prompts: list[str] | None = None
    from difflens.generate.pairs import find_pair_file

    if generation is None and isinstance(fake, (str, Path)) and find_pair_file(fake) is not None:
        from difflens.generate.pairs import read_paired_folder  # manifest.jsonl / metadata.jsonl / .csv

        paired = read_paired_folder(fake, datasets.caption_column)
        fake_input, fake_identity, fake_prompts = paired.files, None, paired.prompts
        warnings += paired.warnings()
        if prompt_list:
            warnings.append(f"--prompts ignored: {paired.source} pairs each image of --fake with its prompt")
    else:
        fake_input, fake_identity, w = resolve_reference(fake, datasets, offline, strict)
        warnings += w
    samples_folder: Path | None = None
    if generation is not None:
        from difflens.generate.api import generate_for_metrics

        if fake is not None:
            raise DifflensError("--model and --fake were both given.",
                                "use --model (generate, then evaluate) or --fake (evaluate a folder)")
        if not prompt_list:
            raise DifflensError("--model needs prompts to generate from.", "pass --prompts FILE")
        gen = generate_for_metrics(generation.model, prompt_list, generation.num_samples,
                                   generation.samples_dir, steps=generation.steps,
                                   guidance=generation.guidance, seed=generation.seed,
                                   batch_size=generation.batch_size, height=generation.height,
                                   width=generation.width, negative_prompt=generation.negative_prompt,
                                   dtype=generation.dtype, device=device, offline=offline)
        fake_input, fake_prompts, samples_folder = gen.files, gen.prompts, gen.folder
        warnings += gen.warnings()
    elif isinstance(fake_input, (str, Path)) and Path(fake_input).is_dir() and prompt_list:
        from difflens.generate.prompts import cycle_prompts
        from difflens.metrics.images import list_image_files

        fake_input = list_image_files(fake_input)
        fake_prompts = cycle_prompts(prompt_list, len(fake_input))

    if inception is None or inception:
        preprocessing = {side: ident["preprocessing"] for side, ident in (("real", real_identity),
                         ("fake", fake_identity)) if ident and ident.get("preprocessing")}
        result = compute_metrics(real_input, fake_input, inception, offline=offline, strict=strict,
                                 device=device, preprocessing=preprocessing or None,
                                 real_features=real_features, fake_features=fake_features, protocol=protocol,
                                 inception_weights=inception_weights, inception_impl=inception_impl,
                                 batch_size=batch_size, seed=seed, kid_subset_size=kid_subset_size,
                                 kid_subsets=kid_subsets,
                                 is_splits=is_splits, bootstrap=bootstrap,
                                 allow_protocol_mismatch=allow_protocol_mismatch,
                                 save_stats=save_stats, save_real_stats=save_real_stats,
                                 save_fake_stats=save_fake_stats)
    else:
        from difflens.versions import collect_versions

        result = {"metrics": {}, "n_real": None, "n_fake": None,
                  "protocol": {"settings": {"metrics": [], "seed": int(seed), "bootstrap": int(bootstrap)}},
                  "versions": collect_versions(), "warnings": []}
    if embedding or featured:
        from difflens.metrics.route import _is_stats

        reported = inception is None or bool(inception)  # the Inception pass already listed skipped files
        fake_items, fake_prompts, w = _readable(_image_items(fake_input), fake_prompts, "--fake", strict,
                                                reported) if fake_input is not None else (None, None, [])
        warnings += w
        real_is_stats = real_input is not None and _is_stats(real_input)
        real_items, _, w = (_readable(_image_items(real_input, "--real"), None, "--real", strict, reported)
                            if real_input is not None and not real_is_stats else (None, None, []))
        warnings += w
    if featured:
        from difflens.metrics.frechet import with_run_options
        from difflens.metrics.route import compute_registered

        # --inception-weights / --inception-impl / --seed reach the features-group metrics that take them
        metric_options = with_run_options(featured, metric_options, inception_weights, inception_impl, seed,
                                          int(bootstrap))
        real_side = _features_side(real_features, "--real-features") or (real_input if real_is_stats
                                                                            else real_items)
        fake_side = _features_side(fake_features, "--fake-features") or fake_items
        extra = compute_registered(featured, real_side, fake_side,
                                   prompts=fake_prompts, metric_options=metric_options, device=device,
                                   offline=offline, batch_size=batch_size, strict=strict,
                                   bootstrap=int(bootstrap), seed=int(seed), show_progress=True)
        result["metrics"].update(extra["metrics"])
        result.setdefault("protocol", {})["features"] = extra["protocol"]
        settings = result["protocol"].setdefault("settings", {})
        settings["metrics"] = [*settings.get("metrics", []), *featured]
        warnings += extra["warnings"]
    if embedding:
        from difflens.metrics.embedding import compute_embedding_metrics
        from difflens.metrics.feature_cache import FeatureCache

        extra = compute_embedding_metrics(
            embedding, fake=fake_items, real=real_items,
            prompts=fake_prompts, clip_model=clip_model, cmmd_clip_model=cmmd_clip_model,
            dinov2_model=dinov2_model, per_prompt=per_prompt,
            bootstrap=int(bootstrap), seed=int(seed),
            device=device, offline=offline, cache=FeatureCache())
        result["metrics"].update(extra["metrics"])
        result.setdefault("protocol", {})["embedding"] = extra.get("protocol", {})
        settings = result["protocol"].setdefault("settings", {})
        settings["metrics"] = [*settings.get("metrics", []), *embedding]
        warnings += extra.get("warnings", [])
        if "per_prompt" in extra:
            result["per_prompt"] = extra["per_prompt"]
    for side_input in (real_input, fake_input):  # datasets streamed above report skipped rows once read
        warnings += list(getattr(getattr(side_input, "images", None), "warnings", None) or [])
    result["warnings"] = list(result.get("warnings", [])) + warnings
    if real_identity or fake_identity:
        result["datasets"] = {"real": real_identity, "fake": fake_identity}
    if generation is not None:
        result["generation"] = {"model": generation.model, "num_samples": generation.num_samples,
                                "samples_dir": str(samples_folder)}
    from difflens.metrics.record import finalize

    return finalize(result)  # the one place the published record is assembled
