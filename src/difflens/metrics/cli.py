"""CLI for the metrics mode: ``difflens metrics --real R --fake F [...]``.

Only typer is imported here; the work (and numpy/torch) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

_METRICS_HELP = ("Comma list of fid,kid,is,pr,dc (pr = precision+recall, dc = density+coverage). "
                 "Default: all that the inputs allow (statistics inputs: FID only; IS needs fake images).")


def register(app: typer.Typer) -> None:
    """Add this mode's commands to the main app."""

    @app.command("metrics")
    def metrics_command(
        real: str | None = typer.Option(None, "--real",
                                        help="Real/reference set: image folder (recursive), .npy/.npz of "
                                             "uint8 images (N,H,W,3), or statistics .npz (mu, sigma)."),
        fake: str | None = typer.Option(None, "--fake", help="Generated set: same kinds as --real."),
        real_features: str | None = typer.Option(
            None, "--real-features", help="Precomputed (N, D) real features (.npy); no extraction."),
        fake_features: str | None = typer.Option(
            None, "--fake-features", help="Precomputed (N, D) fake features (.npy); no extraction."),
        metrics: str | None = typer.Option(None, "--metrics", help=_METRICS_HELP),
        inception_weights: str | None = typer.Option(
            None, "--inception-weights",
            help="Inception weights file (torch-fidelity format). Default: $DIFFLENS_WEIGHTS_DIR, then the "
                 "torch hub cache, then a download."),
        protocol: str = typer.Option("tf-legacy", "--protocol",
                                     help="Resize protocol: tf-legacy (torch-fidelity-exact) or clean "
                                          "(clean-fid's PIL bicubic)."),
        device: str | None = typer.Option(None, "--device",
                                          help="cpu or cuda (default: cuda when available)."),
        batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception forward pass."),
        seed: int = typer.Option(2020, "--seed", help="Seed for KID subsets, IS split order and bootstrap "
                                 "(torch-fidelity's default)."),
        kid_subset_size: int = typer.Option(
            1000, "--kid-subset-size", help="KID subset size (shrunk to the smaller set, with a warning)."),
        kid_subsets: int = typer.Option(100, "--kid-subsets", help="Number of KID subsets."),
        is_splits: int = typer.Option(10, "--is-splits", help="Number of IS splits."),
        bootstrap: int = typer.Option(0, "--bootstrap",
                                      help="B > 0: 95% intervals for fid, kid, precision, recall, density "
                                           "and coverage from B resamples of the fake set."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON to this file."),
        save_stats: Path | None = typer.Option(
            None, "--save-stats",
            help="Write mu, sigma, n and the fingerprint (.npz, pytorch-fid compatible) of the one input "
                 "computed here (e.g. --real FOLDER alone, or --fake FOLDER against reference statistics)."),
        save_real_stats: Path | None = typer.Option(None, "--save-real-stats",
                                                    help="Write the real set's statistics (.npz)."),
        save_fake_stats: Path | None = typer.Option(None, "--save-fake-stats",
                                                    help="Write the fake set's statistics (.npz)."),
        offline: bool = typer.Option(False, "--offline",
                                     help="Never download weights (also set by HF_HUB_OFFLINE=1)."),
        strict: bool = typer.Option(False, "--strict",
                                    help="Unreadable images are an error (default: skipped with a warning)."),
        allow_protocol_mismatch: bool = typer.Option(
            False, "--allow-protocol-mismatch",
            help="Compare statistics made under different fingerprints (protocol, weights, dtype) anyway."),
    ) -> None:
        """FID, KID, IS, precision/recall and density/coverage between a real and a generated image set."""
        from difflens.atomic import write_json
        from difflens.errors import DifflensError
        from difflens.metrics.api import compute_metrics
        from difflens.metrics.table import render

        if json_out is not None and json_out.is_dir():
            raise DifflensError(f"--json {json_out} is a folder.",
                                "pass a file name, e.g. --json metrics.json")
        result = compute_metrics(
            real, fake, metrics, real_features=real_features, fake_features=fake_features, protocol=protocol,
            inception_weights=inception_weights, device=device, batch_size=batch_size, seed=seed,
            kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, is_splits=is_splits,
            bootstrap=bootstrap, offline=offline, strict=strict,
            allow_protocol_mismatch=allow_protocol_mismatch,
            save_stats=save_stats, save_real_stats=save_real_stats, save_fake_stats=save_fake_stats)
        if json_out is not None:
            write_json(json_out, result)
        render(result)
        for flag, path in (("--json", json_out), ("--save-stats", save_stats),
                           ("--save-real-stats", save_real_stats), ("--save-fake-stats", save_fake_stats)):
            if path is not None:
                typer.echo(f"wrote {path} ({flag})")
