"""`difflens demo`: every mode, offline, on a tiny random-weight pipeline and real bundled images.

Everything the demo needs is built in process under RUN_DIR/assets: a tiny Stable-Diffusion-1.x-style
pipeline (random weights, saved and loaded back like a real model), random-init Inception and CLIP
weights in their standard formats, real photographs from scikit-image and scikit-learn cut into crops,
and a prompts file. Then `analyze` runs with every mode.
"""

from __future__ import annotations

from pathlib import Path

from difflens.analyze.config import AnalysisConfig
from difflens.atomic import write_text
from difflens.console import console

DEMO_PROMPTS = (
    "a photo of a cat sitting on a bench",
    "a red car in the city at night",
    "an astronaut riding a horse on the beach",
    "a painting of a mountain at sunset",
    "a portrait of a happy woman",
    "a blue house with a green tree",
)

RANDOM_WEIGHTS_NOTE = (
    "DEMO WITH RANDOM WEIGHTS: the diffusion model, the Inception network and the CLIP model of this run "
    "are randomly initialised (nothing can be downloaded offline). The numbers show difflens working; they "
    "say nothing about image quality and are not comparable to published FIDs."
)


def build_assets(assets: Path) -> dict[str, Path]:
    """Write the tiny model, random-init extractor weights, image sets and prompts; reuse them if present."""
    from difflens.demo.sample_images import grayscale_crops, natural_crops, write_folder
    from difflens.metrics.inception import make_random_inception_weights
    from difflens.tiny import save_tiny_pipeline
    from difflens.tiny_encoders import save_tiny_clip

    paths = {
        "model": assets / "tiny-sd15",
        "inception": assets / "inception-random.pth",
        "clip": assets / "tiny-clip",
        "real": assets / "real",
        "ood_reference": assets / "ood-reference",
        "held_out": assets / "held-out",
        "ood": assets / "grayscale",
        "prompts": assets / "prompts.txt",
    }
    if not (paths["model"] / "model_index.json").is_file():
        save_tiny_pipeline("sd15", paths["model"], seed=0)
    if not paths["inception"].is_file():
        make_random_inception_weights(paths["inception"], seed=0)
    if not (paths["clip"] / "config.json").is_file():
        save_tiny_clip(paths["clip"], seed=0)
    if not paths["real"].is_dir():
        write_folder(natural_crops(48, 64, seed=0), paths["real"], "real")
    if not paths["ood_reference"].is_dir():
        write_folder(natural_crops(20, 64, seed=5), paths["ood_reference"], "ref")
    if not paths["held_out"].is_dir():
        write_folder(natural_crops(10, 64, seed=7), paths["held_out"], "held")
    if not paths["ood"].is_dir():
        write_folder(grayscale_crops(10, 64, seed=1), paths["ood"], "gray")
    if not paths["prompts"].is_file():
        write_text(paths["prompts"], "\n".join(DEMO_PROMPTS) + "\n")
    return paths


def demo_config(out: Path, modes: tuple[str, ...], paths: dict[str, Path]) -> AnalysisConfig:
    clip = str(paths["clip"])
    return AnalysisConfig(
        model=str(paths["model"]), out=out, modes=modes, real=str(paths["real"]),
        prompts=str(paths["prompts"]),
        num_samples=16, prompt="a photo of a cat sitting on a bench", seed=0, device="cpu", offline=True,
        label="tiny random SD-1.x (demo)",
        mode_options={
            "metrics": {"inception_weights": str(paths["inception"]), "bootstrap": 10, "steps": 4,
                        "kid_subset_size": 16, "embedding_metrics": "clip,cmmd", "clip_model": clip,
                        "cmmd_clip_model": clip},
            "schedule": {"steps": 30, "compare": ["sd15", "sdxl", "sd3", "flux", "zero-snr"]},
            "attention": {"steps": 8, "stride": 2},
            "latent": {"frames": 5, "steps": 4, "ood_reference": str(paths["ood_reference"]),
                       "ood_test": str(paths["held_out"]), "ood_images": str(paths["ood"]),
                       "ood_methods": "all", "ood_noise_levels": "0.3,0.6"},
        },
    )


def run_demo(out: str | Path, modes: tuple[str, ...]) -> Path:
    """Build the assets and run `analyze` on them; returns the report path."""
    import os

    from difflens.analyze.runner import run_analysis

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(out)
    console.print(f"[bold yellow]{RANDOM_WEIGHTS_NOTE}[/]")
    paths = build_assets(out / "assets")
    report = run_analysis(demo_config(out, modes, paths), notes=[RANDOM_WEIGHTS_NOTE])
    console.print(f"[bold]open {report} in a browser[/]")
    return report
