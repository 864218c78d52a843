"""CLI for reference sets: ``difflens stats build | list | fetch | show``."""

from __future__ import annotations

from pathlib import Path

import typer

from difflens.config import RUNTIME
from difflens.metrics.config import DatasetOptions, MetricsConfig, StatsBuildConfig

_M, _D = MetricsConfig(), DatasetOptions()  # the defaults: stats build reads datasets as difflens metrics
_S = StatsBuildConfig()

stats_app = typer.Typer(
    name="stats", help="Reference statistics: build them once from a dataset, or fetch published ones.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@stats_app.command("build")
def build_command(
    real: str = typer.Option(..., "--real",
                             help="Reference set: hf:NAME[:CONFIG][:SPLIT] (NAME@REVISION pins a revision), "
                                  "a .parquet file or glob, a save_to_disk folder (FOLDER[:SPLIT]), an image "
                                  "folder with metadata.jsonl/csv, or a plain folder of images."),
    out: Path = typer.Option(..., "--out", help="Statistics file to write (.npz)."),
    keep_features: bool = typer.Option(False, "--keep-features",
                                       help="Also store the pool3 features (N x 2048) for KID and "
                                            "precision/recall."),
    image_column: str = typer.Option(_D.image_column, "--image-column",
                                     help="Dataset column holding the images."),
    num_real: int | None = typer.Option(_D.num_real, "--num-real",
                                        help="Use a reproducible subset of this many "
                                             "rows (default: all rows)."),
    subset_seed: int = typer.Option(_D.subset_seed, "--subset-seed", help="Seed of the --num-real subset."),
    reference_size: int | None = typer.Option(_D.reference_size, "--reference-size",
                                              help="Resize the shorter side (PIL bicubic, antialiased) "
                                                   "and center-crop to this size, e.g. 256 (default: as "
                                                   "stored)."),
    inception_weights: Path | None = typer.Option(None, "--inception-weights",
                                                  help="Inception weights file (default: the published "
                                                       "TF-2015-12-05 file from the usual caches)."),
    protocol: str = typer.Option(_M.protocol, "--protocol",
                                 help="Inception resize protocol: tf-legacy (torch-fidelity/TTUR) or clean "
                                      "(clean-fid)."),
    clip_model: str | None = typer.Option(None, "--clip-model",
                                          help="Also store CLIP image embeddings (CMMD protocol) of this "
                                               "CLIP model (hub id or folder)."),
    offline: bool = typer.Option(RUNTIME.offline, "--offline", help="Never download; use local caches only."),
    streaming: bool = typer.Option(_D.streaming, "--streaming",
                                   help="Stream an hf: dataset instead of preparing "
                                        "it in the local cache."),
    strict: bool = typer.Option(_M.strict, "--strict",
                                help="Fail on an image that cannot be decoded (default: "
                                     "skip it, count it and report it)."),
    batch_size: int | None = typer.Option(_S.batch_size, "--batch-size",
                                          help="Images per Inception batch (default: 16 on CPU, which bounds "
                                               "the memory of a long build, 128 on a GPU)."),
    device: str | None = typer.Option(RUNTIME.device, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
    stats_format: str = typer.Option("difflens", "--format",
                                     help="difflens (mu, sigma, n, fingerprint: pytorch-fid compatible) or "
                                          "adm (also sFID's mu_s and sigma_s of the Inception mixed_6/conv "
                                          "features, as the ADM evaluator's reference batches hold them)."),
) -> None:
    """Compute the Gaussian statistics of a reference set once, with its fingerprint and dataset identity."""
    from difflens.console import console
    from difflens.preflight import preflight
    from difflens.refsets.build_stats import build_reference_stats

    preflight(files={"--out": out}, device=device)
    result = build_reference_stats(
        real, out, keep_features=keep_features, image_column=image_column, num=num_real,
        subset_seed=subset_seed, reference_size=reference_size, inception_weights=inception_weights,
        protocol=protocol, offline=offline, batch_size=batch_size, device=device, clip_model=clip_model,
        streaming=streaming, strict=strict, stats_format=stats_format)  # type: ignore[arg-type]
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    read = result.dataset["read"]
    kept = ", ".join(k for k, on in (("pool3 features", result.kept_features),
                                     ("CLIP embeddings", result.clip_features)) if on)
    console.print(f"{result.n} images ({read['num_skipped']} skipped) -> {result.out}"
                  + (f" with {kept}" if kept else "")
                  + f" ({result.images_per_s:.1f} img/s)", highlight=False)


@stats_app.command("list")
def list_command() -> None:
    """List the registry of published reference statistics (use them as --real stats:NAME).

    One entry a line on stdout (`difflens stats list | grep cifar10`); the cache folder goes to stderr."""
    from difflens.console import console
    from difflens.refsets.registry import REGISTRY, cache_dir

    console.print(f"published reference statistics (cache: {cache_dir()})", highlight=False, soft_wrap=True)
    for entry in REGISTRY.values():
        cached = "cached" if (cache_dir() / entry.filename).is_file() else "not cached"
        digest = f"sha256 {entry.sha256[:12]}..." if entry.sha256 else "sha256 unverified"
        typer.echo(f"stats:{entry.name}  {entry.dataset}; protocol {entry.protocol}; n={entry.num_images}; "
                   f"{entry.publisher}; {digest}; {cached}; {entry.url}")


@stats_app.command("fetch")
def fetch_command(
    name: str = typer.Argument(..., help="Registry name (see `difflens stats list`), with or without "
                                         "stats:."),
    offline: bool = typer.Option(False, "--offline", help="Only check the cache; never download."),
) -> None:
    """Download (or find in the cache) published statistics and check their SHA-256."""
    from difflens.console import console
    from difflens.refsets.registry import resolve_registry_stats

    res = resolve_registry_stats(name, offline=offline)
    for warning in res.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    state = "verified" if res.verified else "unverified (pinned)"
    console.print(f"stats:{res.entry.name} -> {res.path} (SHA-256 {res.sha256}, {state}"
                  f"{', downloaded' if res.downloaded else ''})", highlight=False)


@stats_app.command("show")
def show_command(path: Path = typer.Argument(..., help="A statistics .npz file.")) -> None:
    """Print what a statistics file holds: n, dimension, fingerprint, dataset identity, extra arrays."""
    import json

    from difflens.metrics.stats import load_stats

    stats, fingerprint, extra = load_stats(path)
    info: dict[str, object] = {"n": stats.n, "dim": stats.dim, "fingerprint": fingerprint,
                               "arrays": {k: list(v.shape) for k, v in extra.items()}}
    if "dataset" in extra:
        info["dataset"] = json.loads(str(extra["dataset"].reshape(())))
    typer.echo(json.dumps(info, indent=2, default=str))


def register(app: typer.Typer) -> None:
    """Add the ``stats`` command group to the main app."""
    app.add_typer(stats_app, name="stats")
