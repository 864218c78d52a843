"""`difflens demo`: every mode, offline, on the shapes-world models shipped with difflens.

The models (:mod:`difflens.shapes`) are small: a VAE, a CLIP, an SD 1.x-layout UNet and an SD3-layout MMDiT,
trained in this repository on CPU on a toy world of coloured circles, squares and triangles on a light
background (64x64). They know that world and nothing else. Under RUN_DIR/assets the demo writes rendered
held-out scenes (the real images), scikit-learn's digits scaled to 64x64 (the out-of-distribution images),
random-init Inception weights (nothing can be downloaded) and a prompts file; then `analyze` runs every mode
on the UNet with the shipped CLIP (CLIP score, CMMD), and the extra steps of :mod:`difflens.demo.extras` add
the MMDiT's attention, attention on real images scored against ground-truth masks, and a shape-to-shape
interpolation. The report is rebuilt at the end so it shows everything.
"""

from __future__ import annotations

from pathlib import Path

from difflens.analyze.config import AnalysisConfig
from difflens.atomic import write_text
from difflens.console import console
from difflens.demo.shapes_data import DEMO_PROMPTS, STARTS

DEMO_PROMPT = "a red circle and a blue square"
N_REAL, N_OOD = 48, 24

TOY_MODEL_NOTE = (
    "DEMO ON A TOY WORLD: the diffusion models (a UNet in the Stable Diffusion 1.x layout and an MMDiT in "
    "the SD3 layout), their VAE and the CLIP model were trained in the difflens repository, on CPU, on 64x64 "
    "images of coloured circles, squares and triangles on a light background. They are not real "
    "text-to-image models and know nothing outside that world. The real images are rendered held-out "
    "scenes of the same world; the out-of-distribution images are scikit-learn's handwritten digits."
)
RANDOM_INCEPTION_NOTE = (
    "The Inception network of FID, KID, IS, precision/recall and density/coverage is RANDOMLY INITIALISED "
    "(its weights cannot be downloaded offline): those numbers show difflens working and are not comparable "
    "to any published value. CLIP score and CMMD use the shipped shapes-world CLIP."
)


def build_assets(assets: Path) -> dict[str, Path]:
    """Write the image sets, random-init Inception weights and prompts; reuse them if present."""
    from difflens.demo.sample_images import write_folder
    from difflens.demo.shapes_data import digits_rgb, heldout_shapes
    from difflens.metrics.inception import make_random_inception_weights

    paths = {
        "inception": assets / "inception-random.pth",
        "real": assets / "real-shapes",
        "ood_reference": assets / "ood-reference-shapes",
        "ood_test": assets / "ood-test-shapes",
        "ood": assets / "digits",
        "prompts": assets / "prompts.txt",
    }
    if not paths["inception"].is_file():
        make_random_inception_weights(paths["inception"], seed=0)
    for key, n in (("real", N_REAL), ("ood_reference", N_OOD), ("ood_test", N_OOD)):
        if not paths[key].is_dir():
            write_folder(heldout_shapes(n, STARTS[key])[0], paths[key], "shape")
    if not paths["ood"].is_dir():
        write_folder(digits_rgb(N_OOD), paths["ood"], "digit")
    if not paths["prompts"].is_file():
        write_text(paths["prompts"], "\n".join(DEMO_PROMPTS) + "\n")
    return paths


def demo_config(out: Path, modes: tuple[str, ...], paths: dict[str, Path]) -> AnalysisConfig:
    from difflens.shapes import pretrained, pretrained_clip

    clip = pretrained_clip()
    return AnalysisConfig(
        model=pretrained("unet"), out=out, modes=modes, real=str(paths["real"]),
        prompts=str(paths["prompts"]),
        num_samples=16, prompt=DEMO_PROMPT, seed=0, device="cpu", offline=True,
        label="shapes-world UNet (SD 1.x layout, toy model trained in difflens)",
        mode_options={
            "metrics": {"inception_weights": str(paths["inception"]), "bootstrap": 10, "steps": 10,
                        "kid_subset_size": 16, "embedding_metrics": "clip,cmmd", "clip_model": clip,
                        "cmmd_clip_model": clip},
            "schedule": {"steps": 20, "compare": [pretrained("mmdit"), "sd15", "sd3"]},
            "attention": {"steps": 10, "stride": 3},
            "latent": {"frames": 6, "steps": 10, "ood_reference": str(paths["ood_reference"]),
                       "ood_test": str(paths["ood_test"]), "ood_images": str(paths["ood"]),
                       "ood_methods": "all", "ood_noise_levels": "0.3,0.6"},
        },
    )


def run_extras(cfg: AnalysisConfig) -> list[str]:
    """The extra steps (module docs); a failing step is reported and the rest still run. Returns notes."""
    from rich.markup import escape

    from difflens.demo import extras
    from difflens.demo.shapes_data import STARTS as starts
    from difflens.shapes import pretrained, split_seeds

    out = cfg.out
    seeds = split_seeds("heldout", extras.SCORED, start=starts["scored"])
    steps: list[tuple[str, str, object]] = []
    if "attention" in cfg.modes:
        steps += [
            ("attention", "MMDiT attention",
             lambda: extras.mmdit_attention(pretrained("mmdit"), cfg.prompt, out / "attention" / "mmdit",
                                            steps=10, seed=cfg.seed)),
            *[("attention", f"{fam} attention on real images",
               (lambda fam=fam: extras.real_image_attention(fam, pretrained(fam), seeds, out / "attention",
                                                            out / "scored")))
              for fam in ("unet", "mmdit")],
        ]
    if "latent" in cfg.modes:
        steps.append(("latent", "shape-to-shape interpolation",
                      lambda: extras.shape_to_shape(cfg.model, out / "latent" / "shape-to-shape",
                                                    ("a red circle", "a blue square"), seed=cfg.seed,
                                                    frames=6, steps=10)))
    notes = []
    for mode, title, step in steps:
        console.rule(f"[bold]demo: {title}")
        try:
            step()  # type: ignore[operator]
        except Exception as exc:  # a demo extra must not hide the modes that worked
            notes.append(f"demo step '{title}' ({mode}) failed: {type(exc).__name__}: {exc}")
            console.print(f"[bold red]{escape(notes[-1])}[/]", highlight=False)
    return notes


def run_demo(out: str | Path, modes: tuple[str, ...]) -> Path:
    """Build the assets, run `analyze` and the extra steps, rebuild the report; returns the report path."""
    import json
    import os

    from difflens.analyze.runner import run_analysis
    from difflens.atomic import write_json
    from difflens.report.render import write_report

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(out)
    console.print(f"[bold yellow]{TOY_MODEL_NOTE}[/]")
    paths = build_assets(out / "assets")
    cfg = demo_config(out, modes, paths)
    run_analysis(cfg, notes=[TOY_MODEL_NOTE, RANDOM_INCEPTION_NOTE])
    failures = run_extras(cfg)
    if failures:
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
        info["notes"] = info.get("notes", []) + failures
        write_json(out / "run.json", info)
    report = write_report([out])
    console.print(f"[bold]open {report} in a browser[/]")
    return report
