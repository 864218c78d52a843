"""CLI for the metrics mode: ``difflens metrics --real R --fake F [...]``.

Only typer is imported here; the work (and numpy/torch) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this mode's commands to the main app."""
    from difflens.config import RUNTIME
    from difflens.metrics.catalog import inputs_help, metrics_help  # light: lists from the registries
    from difflens.metrics.config import (
        DEFAULT_CMMD_CLIP_MODEL,
        DEFAULT_DINOV2_MODEL,
        DatasetOptions,
        EmbeddingConfig,
        GenerationRequest,
        MetricsConfig,
    )

    m, e, d = MetricsConfig(), EmbeddingConfig(), DatasetOptions()  # the defaults
    g = GenerationRequest(model="", num_samples=0)

    @app.command("metrics")
    def metrics_command(
        real: str | None = typer.Option(None, "--real", help=f"Real/reference set. Kinds: {inputs_help()}."),
        fake: str | None = typer.Option(
            None, "--fake", help="Generated set: same kinds as --real. A folder with manifest.jsonl, "
                                 "metadata.jsonl or metadata.csv pairs each image with its prompt (clip)."),
        real_features: str | None = typer.Option(
            None, "--real-features",
            help="Precomputed (N, D) real features: .npy, or .npz with 'features' (e.g. from stats build "
                 "--keep-features); no extraction, so KID and precision/recall work without images."),
        fake_features: str | None = typer.Option(
            None, "--fake-features", help="Precomputed (N, D) fake features (.npy or .npz, as "
                                          "--real-features); no extraction."),
        metrics: str | None = typer.Option(m.metrics, "--metrics", help=metrics_help()),
        inception_weights: str | None = typer.Option(
            None, "--inception-weights",
            help="Inception weights file (torch-fidelity format). Default: $DIFFLENS_WEIGHTS_DIR, then the "
                 "torch hub cache, then a download."),
        protocol: str = typer.Option(m.protocol, "--protocol",
                                     help="Resize protocol: tf-legacy (torch-fidelity-exact) or clean "
                                          "(clean-fid's PIL bicubic)."),
        inception_impl: str = typer.Option(
            m.inception_impl, "--inception-impl",
            help="Inception implementation: reference (torch-fidelity's module, bit-identical features) or "
                 "fast (batch-norm folded, channels-last: faster on CPU; features within 1e-6 of the "
                 "feature scale, FID within about 1e-6 relative)."),
        device: str | None = typer.Option(RUNTIME.device, "--device",
                                          help="cpu or cuda (default: cuda when available)."),
        batch_size: int = typer.Option(m.batch_size, "--batch-size",
                                       help="Images per Inception forward pass."),
        seed: int = typer.Option(m.seed, "--seed", help="Seed for KID subsets, IS split order and bootstrap. "
                                 "2020 is torch-fidelity's default, so KID matches it; every other seed "
                                 "option of difflens defaults to 0."),
        kid_subset_size: int = typer.Option(
            m.kid_subset_size, "--kid-subset-size",
            help="KID subset size (shrunk to the smaller set, with a warning)."),
        kid_subsets: int = typer.Option(m.kid_subsets, "--kid-subsets", help="Number of KID subsets."),
        is_splits: int = typer.Option(m.is_splits, "--is-splits", help="Number of IS splits."),
        bootstrap: int = typer.Option(m.bootstrap, "--bootstrap",
                                      help="B > 0: 95% intervals for fid, kid, precision, recall, density "
                                           "and coverage from B resamples of the fake set."),
        json_out: Path | None = typer.Option(
            None, "--json", help="Write the result as JSON to this file; - prints only the JSON on stdout "
                                 "(the table and every message then go to stderr)."),
        save_stats: Path | None = typer.Option(
            None, "--save-stats",
            help="Write mu, sigma, n and the fingerprint (.npz, pytorch-fid compatible) of the one input "
                 "computed here (e.g. --real FOLDER alone, or --fake FOLDER against reference statistics)."),
        save_real_stats: Path | None = typer.Option(None, "--save-real-stats",
                                                    help="Write the real set's statistics (.npz)."),
        save_fake_stats: Path | None = typer.Option(None, "--save-fake-stats",
                                                    help="Write the fake set's statistics (.npz)."),
        offline: bool = typer.Option(RUNTIME.offline, "--offline",
                                     help="Never download weights (also set by HF_HUB_OFFLINE=1 or "
                                          "DIFFLENS_OFFLINE=1)."),
        strict: bool = typer.Option(m.strict, "--strict",
                                    help="Unreadable or oversized images (over PIL's MAX_IMAGE_PIXELS) are "
                                         "an error (default: skipped with a warning)."),
        allow_protocol_mismatch: bool = typer.Option(
            m.allow_protocol_mismatch, "--allow-protocol-mismatch",
            help="Compare statistics made under different fingerprints (protocol, weights, dtype) anyway."),
        model: str | None = typer.Option(
            None, "--model", help="Generate the fake set from this diffusers pipeline (hub id or folder), "
                                  "resumably, then evaluate it. Needs --prompts and --num-samples."),
        prompts: str | None = typer.Option(
            None, "--prompts", help="Prompts: .txt (one a line), .jsonl/.csv with a prompt column, or a "
                                    "dataset spec (hf:NAME, parquet, arrow) with --caption-column."),
        num_samples: int | None = typer.Option(None, "--num-samples", min=2,
                                               help="Samples to generate with --model."),
        samples_dir: str | None = typer.Option(
            None, "--samples-dir", help="Where --model writes its samples (default: a cache folder keyed "
                                        "by the settings; rerunning resumes)."),
        steps: int | None = typer.Option(g.steps, "--steps", help="Inference steps for --model."),
        guidance: float | None = typer.Option(g.guidance, "--guidance", help="Guidance scale for --model."),
        gen_seed: int = typer.Option(g.seed, "--gen-seed",
                                     help="Base seed of generated samples (--model), as generate --seed."),
        gen_batch_size: int | None = typer.Option(g.batch_size, "--gen-batch-size",
                                                  help="Generation batch size (default: measured)."),
        height: int | None = typer.Option(g.height, "--height", help="Image height for --model."),
        width: int | None = typer.Option(g.width, "--width", help="Image width for --model."),
        negative_prompt: str | None = typer.Option(g.negative_prompt, "--negative-prompt",
                                                   help="For --model."),
        dtype: str = typer.Option(g.dtype, "--dtype", help="float32, float16 or bfloat16 (for --model)."),
        clip_model: str = typer.Option(e.clip_model, "--clip-model",
                                       help="CLIP model (hub id or folder) for --metrics clip."),
        cmmd_clip_model: str | None = typer.Option(
            e.cmmd_clip_model, "--cmmd-clip-model",
            help=f"CLIP model for cmmd (default {DEFAULT_CMMD_CLIP_MODEL})."),
        dinov2_model: str | None = typer.Option(
            e.dinov2_model, "--dinov2-model",
            help=f"DINOv2 model for fd-dinov2 (default {DEFAULT_DINOV2_MODEL})."),
        imagereward_checkpoint: str | None = typer.Option(
            e.imagereward_checkpoint, "--imagereward-checkpoint",
            help="ImageReward.pt for --metrics imagereward, loaded strictly (default: THUDM/ImageReward's "
                 "file from the hub or its cache)."),
        imagereward_tokenizer: str = typer.Option(
            e.imagereward_tokenizer, "--imagereward-tokenizer",
            help="Tokenizer of imagereward (hub id or folder); BLIP's [DEC] and [ENC] are added to it."),
        imagereward_config: str | None = typer.Option(
            e.imagereward_config, "--imagereward-config",
            help="med_config.json of the imagereward network (default: the published architecture)."),
        hpsv2_checkpoint: str | None = typer.Option(
            e.hpsv2_checkpoint, "--hpsv2-checkpoint",
            help="HPS checkpoint (.pt) for --metrics hpsv2, loaded strictly (default: the --hpsv2-version "
                 "file of xswu/HPSv2 from the hub; with --offline this option is required)."),
        hpsv2_arch: str = typer.Option(
            e.hpsv2_arch, "--hpsv2-arch",
            help="open_clip architecture name or model-config JSON of the HPS checkpoint."),
        hpsv2_version: str = typer.Option(
            e.hpsv2_version, "--hpsv2-version",
            help="HPS version: 2.1 (the current leaderboard) or 2.0; recorded with the score."),
        pickscore_model: str = typer.Option(
            e.pickscore_model, "--pickscore-model",
            help="PickScore CLIPModel (hub id or save_pretrained folder) for --metrics pickscore."),
        preference_dtype: str = typer.Option(
            e.preference_dtype, "--preference-dtype",
            help="float32, or float16/bfloat16 autocast (GPU) for the hpsv2, pickscore and imagereward "
                 "networks."),
        fd_clip_model: str = typer.Option(
            e.fd_clip_model, "--fd-clip-model",
            help="CLIP model of fd-clip (default clean-fid's CLIP-FID network, ViT-B/32)."),
        fid_inf_min_fake: int = typer.Option(
            e.fid_inf_min_fake, "--fid-inf-min-fake", min=2,
            help="fid-inf: smallest sample size of the 1/N fit (FID_IS_infinity's default 5000)."),
        fid_inf_points: int = typer.Option(
            e.fid_inf_points, "--fid-inf-points", min=2,
            help="fid-inf: number of sample sizes of the fit, evenly spaced up to all --fake images."),
        vendi_q: float = typer.Option(
            e.vendi_q, "--vendi-q",
            help="vendi: order q of the entropy (1: Shannon, the paper's score; 2, 0.5, ..., or inf)."),
        per_prompt: bool = typer.Option(e.per_prompt, "--per-prompt",
                                        help="CLIP score per prompt and the worst-aligned prompts."),
        image_column: str = typer.Option(d.image_column, "--image-column",
                                         help="Image column of dataset specs."),
        caption_column: str | None = typer.Option(
            d.caption_column, "--caption-column",
            help="Caption column of a --prompts dataset (default caption), or of the manifest.jsonl, "
                 "metadata.jsonl or metadata.csv of a --fake folder (default: the first of prompt, text, "
                 "caption)."),
        num_real: int | None = typer.Option(d.num_real, "--num-real",
                                            help="Reproducible subset of N dataset rows."),
        subset_seed: int = typer.Option(d.subset_seed, "--subset-seed",
                                        help="Seed of the --num-real subset."),
        reference_size: int | None = typer.Option(
            d.reference_size, "--reference-size",
            help="Resize (shorter side, bicubic) and center-crop dataset images."),
        streaming: bool = typer.Option(d.streaming, "--streaming",
                                       help="Stream hf: datasets instead of caching."),
    ) -> None:
        """FID, KID, IS, precision/recall, density/coverage (Inception), CLIP score, CMMD and FD-DINOv2
        between a reference set and generated images (a folder, or samples generated from --model)."""
        from difflens.console import console
        from difflens.errors import DifflensError
        from difflens.metrics.evaluate import DatasetOptions, GenerationRequest, evaluate
        from difflens.metrics.table import render
        from difflens.output import is_stdout, write_result_json
        from difflens.preflight import preflight

        preflight(files={"--json": json_out, "--save-stats": save_stats, "--save-real-stats": save_real_stats,
                         "--save-fake-stats": save_fake_stats},
                  folders={"--samples-dir": samples_dir}, dtype=dtype, device=device)
        if model is None and num_samples is not None:
            raise DifflensError("--num-samples only applies with --model.", "add --model M, or drop it")
        if model is not None and num_samples is None:
            raise DifflensError("--model needs --num-samples.", "pass --num-samples N")
        generation = None if model is None else GenerationRequest(
            model=model, num_samples=num_samples or 0, samples_dir=samples_dir, steps=steps,
            guidance=guidance,
            seed=gen_seed, batch_size=gen_batch_size, height=height, width=width,
            negative_prompt=negative_prompt, dtype=dtype)
        datasets = DatasetOptions(image_column=image_column, caption_column=caption_column, num_real=num_real,
                                  subset_seed=subset_seed, reference_size=reference_size, streaming=streaming)
        # settings of the features-group metrics (metrics/route.py), one dict per metric name
        metric_options: dict[str, dict[str, object]] = {}
        metric_options["fd-clip"] = {"clip_model": fd_clip_model}
        metric_options["fid-inf"] = {"min_fake": fid_inf_min_fake, "points": fid_inf_points}
        metric_options["vendi"] = {"q": vendi_q}
        from difflens.metrics.config import preference_options

        metric_options.update(preference_options(
            hpsv2_checkpoint=hpsv2_checkpoint, hpsv2_arch=hpsv2_arch, hpsv2_version=hpsv2_version,
            pickscore_model=pickscore_model, imagereward_checkpoint=imagereward_checkpoint,
            imagereward_tokenizer=imagereward_tokenizer, imagereward_config=imagereward_config,
            dtype=preference_dtype))
        result = evaluate(
            real, fake, metrics, prompts=prompts, generation=generation, datasets=datasets,
            clip_model=clip_model, cmmd_clip_model=cmmd_clip_model, dinov2_model=dinov2_model,
            per_prompt=per_prompt, offline=offline, strict=strict, device=device,
            real_features=real_features, fake_features=fake_features, protocol=protocol,
            inception_weights=inception_weights, inception_impl=inception_impl, batch_size=batch_size,
            seed=seed,
            kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, is_splits=is_splits,
            bootstrap=bootstrap, allow_protocol_mismatch=allow_protocol_mismatch,
            save_stats=save_stats, save_real_stats=save_real_stats, save_fake_stats=save_fake_stats,
            metric_options=metric_options)
        from difflens.distributed import is_main

        if not is_main():  # under torchrun every rank holds the result; rank 0 writes and prints it
            return
        to_stdout = is_stdout(json_out)  # then stdout carries the JSON and nothing else
        if json_out is not None:
            write_result_json(json_out, result)
        render(result, console=console if to_stdout else None)
        for flag, path in (("--json", json_out), ("--save-stats", save_stats),
                           ("--save-real-stats", save_real_stats), ("--save-fake-stats", save_fake_stats)):
            if path is not None and not is_stdout(path):
                if to_stdout:
                    console.print(f"wrote {path} ({flag})", highlight=False, soft_wrap=True, markup=False)
                else:
                    typer.echo(f"wrote {path} ({flag})")
