"""Latent mode end to end through the CLI (tiny random pipelines, 32 px, 2 steps) and its bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflens.cli import main

SIZE = "32"


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def _pil_reference(model_dir: Path, prompt: str, seed: int, steps: int = 2) -> np.ndarray:
    """What a plain `pipe(prompt, generator=manual_seed(seed))` gives, as uint8."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        img = pipe(prompt, height=32, width=32, num_inference_steps=steps, output_type="pt",
                   generator=torch.Generator().manual_seed(seed)).images[0]
    return (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference/test: smooth near-uniform mid-tone images; OOD: high-contrast checkerboards."""
    root = tmp_path_factory.mktemp("latent-images")
    rng = np.random.default_rng(0)

    def smooth() -> Image.Image:
        img = rng.uniform(0.35, 0.65, 3) + rng.normal(0, 0.03, (32, 32, 3))
        return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))

    def checker() -> Image.Image:
        yy, xx = np.mgrid[:32, :32]
        c = ((yy // 4 + xx // 4) % 2).astype(float)
        img = np.stack([c, 1 - c, rng.uniform() * np.ones_like(c)], -1)
        return Image.fromarray((img * 255).astype(np.uint8))

    sets = {name: root / name for name in ("reference", "test", "ood", "few", "mixed")}
    for p in sets.values():
        p.mkdir()
    for i in range(12):
        smooth().save(sets["reference"] / f"r{i:02d}.png")
    for i in range(6):
        smooth().save(sets["test"] / f"t{i:02d}.png")
        checker().save(sets["ood"] / f"o{i:02d}.png")
    for i in range(3):
        smooth().save(sets["few"] / f"f{i}.png")
    smooth().resize((48, 40)).save(sets["mixed"] / "a.png")  # wider than tall
    checker().resize((64, 64)).convert("L").save(sets["mixed"] / "b.jpg")  # larger, grayscale
    smooth().resize((20, 30)).save(sets["mixed"] / "c.png")  # smaller than the model size
    return sets


def test_interpolate_seeds_writes_frames_json_and_reproduces_the_endpoints(tiny_pipeline_dir,
                                                                           tmp_path) -> None:
    model = tiny_pipeline_dir("sd15")
    out = tmp_path / "interp"
    assert run(["latent", "interpolate", "--model", str(model), "--prompt", "a photo of a cat",
                "--seeds", "3,4", "--frames", "4", "--steps", "2", "--size", SIZE, "--out", str(out)]) == 0
    data = json.loads((out / "interpolation.json").read_text())
    assert data["method"] == "slerp" and data["endpoints"]["kind"] == "seeds"
    frames = data["frames"]
    assert [f["t"] for f in frames] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert frames[0]["step_distance"] is None and all(f["step_distance"] > 0 for f in frames[1:])
    assert all(abs(f["latent_norm_z"]) < 4 for f in frames)  # slerp stays in the typical set
    assert set(data["smoothness"]) >= {"mean_step", "max_step", "max_over_mean", "largest_jump_frame"}
    assert data["smoothness"]["max_step"] == pytest.approx(max(f["step_distance"] for f in frames[1:]))
    assert "versions" in data and data["feature_space"]["name"] == "vae"
    for name in ("strip.png", "step_distances.png", *(f["file"] for f in frames)):
        assert (out / name).is_file()
    # t = 0 and t = 1 are exactly the pipeline's own images for seeds 3 and 4: slerp returns the endpoint
    # noise itself, and each frame is one batch-1 pipeline call in this process (same kernels, same inputs)
    first = np.asarray(Image.open(out / frames[0]["file"]))
    last = np.asarray(Image.open(out / frames[-1]["file"]))
    assert np.array_equal(first, _pil_reference(model, "a photo of a cat", 3))
    assert np.array_equal(last, _pil_reference(model, "a photo of a cat", 4))

    lerp = tmp_path / "lerp"
    assert run(["latent", "interpolate", "--model", str(model), "--prompt", "a photo of a cat",
                "--seeds", "3,4", "--frames", "3", "--steps", "2", "--size", SIZE, "--method", "lerp",
                "--out", str(lerp)]) == 0
    mid = json.loads((lerp / "interpolation.json").read_text())["frames"][1]["latent_norm_z"]
    assert mid < -5  # the lerp midpoint leaves the typical set (norm ~ sqrt(d/2))


def test_interpolate_prompts_on_flux_and_images(tiny_pipeline_dir, tmp_path, image_sets) -> None:
    out = tmp_path / "prompts"
    assert run(["latent", "interpolate", "--model", str(tiny_pipeline_dir("flux")), "--prompt", "a red car",
                "--prompt2", "a blue house", "--frames", "3", "--steps", "2", "--size", SIZE,
                "--max-sequence-length", "32", "--out", str(out)]) == 0
    data = json.loads((out / "interpolation.json").read_text())
    assert data["endpoints"]["kind"] == "prompts" and data["vae"]["packed_2x2"] is True
    assert len({f["latent_norm_z"] for f in data["frames"]}) == 1  # one seed: the noise is fixed

    out2 = tmp_path / "images"
    imgs = f"{image_sets['mixed'] / 'a.png'},{image_sets['mixed'] / 'b.jpg'}"
    assert run(["latent", "interpolate", "--model", str(tiny_pipeline_dir("sd15")), "--images", imgs,
                "--frames", "3", "--size", SIZE, "--out", str(out2)]) == 0
    data = json.loads((out2 / "interpolation.json").read_text())
    assert data["endpoints"]["kind"] == "images" and len(data["frames"]) == 3
    assert Image.open(out2 / data["frames"][0]["file"]).size == (32, 32)


def test_direction_scale_zero_is_the_base_image(tiny_pipeline_dir, tmp_path) -> None:
    from difflens.tiny_encoders import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    model = tiny_pipeline_dir("sd15")
    out = tmp_path / "direction"
    assert run(["latent", "direction", "--model", str(model), "--positive", "happy", "--negative", "sad",
                "--positive", "a bright sky", "--negative", "a dark sky", "--prompt", "a photo of a cat",
                "--scales", "-2,0,2", "--seed", "11", "--steps", "2", "--size", SIZE,
                "--clip-model", str(clip), "--out", str(out)]) == 0
    data = json.loads((out / "direction.json").read_text())
    assert data["scales"] == [-2.0, 0.0, 2.0] and len(data["pairs"]) == 2
    rows = data["per_scale"]
    assert all(isinstance(r["clip_positive"], float) and isinstance(r["clip_negative"], float) for r in rows)
    assert r"margin_increases" in data["monotonic"]
    assert (out / "grid.png").is_file()
    base = _pil_reference(model, "a photo of a cat", 11)
    zero = np.asarray(Image.open(out / rows[1]["file"]))
    assert np.array_equal(zero, base)
    assert not np.array_equal(np.asarray(Image.open(out / rows[2]["file"])), base)
    # the similarities are CLIP's own: cosine of transformers' projected embeddings, mean over the prompts
    import torch
    from transformers import CLIPModel, CLIPProcessor

    cm, proc = CLIPModel.from_pretrained(str(clip)).eval(), CLIPProcessor.from_pretrained(str(clip))
    with torch.no_grad():
        img = cm.get_image_features(**proc(images=[Image.fromarray(zero)], return_tensors="pt"))
        txt = cm.get_text_features(**proc(text=["happy", "a bright sky"], return_tensors="pt", padding=True))
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    cos = torch.nn.functional.cosine_similarity(img.double(), txt.double()).mean()
    assert rows[1]["clip_positive"] == pytest.approx(float(cos), abs=1e-5)


def test_interpolate_inception_distances_are_torch_fidelity_features(tiny_pipeline_dir, tmp_path) -> None:
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from difflens.metrics.inception import make_random_inception_weights

    weights = make_random_inception_weights(tmp_path / "inception.pth")
    out = tmp_path / "inc"
    assert run(["latent", "interpolate", "--model", str(tiny_pipeline_dir("sd15")), "--prompt", "a red car",
                "--frames", "3", "--steps", "2", "--size", SIZE, "--features", "inception",
                "--inception-weights", str(weights), "--out", str(out)]) == 0
    data = json.loads((out / "interpolation.json").read_text())
    assert data["feature_space"]["name"] == "inception" and data["feature_space"]["random_init"] is True
    frames = np.stack([np.asarray(Image.open(out / f["file"])) for f in data["frames"]])
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(weights)).eval()
    with torch.no_grad():
        feats = net(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())[0].double().numpy()
    expected = np.linalg.norm(np.diff(feats, axis=0), axis=1)
    got = [f["step_distance"] for f in data["frames"][1:]]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_encode_mixed_sizes_with_psnr_report(tiny_pipeline_dir, tmp_path, image_sets) -> None:
    out = tmp_path / "lat" / "latents.npz"
    assert run(["latent", "encode", str(image_sets["mixed"]), "--model", str(tiny_pipeline_dir("flux")),
                "--size", SIZE, "--out", str(out)]) == 0
    z = np.load(out)
    assert z["latents"].shape == (3, 4, 16, 16) and z["latents_packed"].shape == (3, 64, 16)
    report = json.loads((tmp_path / "lat" / "latents.json").read_text())
    assert [Path(r["file"]).name for r in report["images"]] == ["a.png", "b.jpg", "c.png"]
    assert all(np.isfinite(r["psnr"]) for r in report["images"])
    assert report["vae"] == {"scaling_factor": 0.3611, "shift_factor": 0.1159, "packed_2x2": True}
    assert "center-cropped" in report["resize"] and "versions" in report

    st = tmp_path / "lat2" / "z.safetensors"
    assert run(["latent", "encode", str(image_sets["mixed"] / "a.png"), "--model",
                str(tiny_pipeline_dir("sd15")), "--size", SIZE, "--out", str(st)]) == 0
    from safetensors.numpy import load_file

    assert load_file(str(st))["latents"].shape == (1, 4, 16, 16)


def test_ood_synthetic_task_metrics_match_sklearn(tiny_pipeline_dir, tmp_path, image_sets) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    out = tmp_path / "ood"
    assert run(["latent", "ood", "--model", str(tiny_pipeline_dir("sd15")), "--reference",
                str(image_sets["reference"]), "--test", str(image_sets["test"]), "--ood",
                str(image_sets["ood"]), "--size", SIZE, "--steps", "2", "--noise-levels", "0.5,1.0",
                "--out", str(out)]) == 0
    result = json.loads((out / "ood.json").read_text())
    assert result["n_reference"] == 12 and result["warnings"]  # fewer than 100: warned
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    methods = ["latent-zscore", "mahalanobis", "reconstruction"]
    assert list(rows[0]) == ["file", "label", *methods]
    labels = np.array([int(r["label"]) for r in rows])
    assert labels.tolist() == [0] * 6 + [1] * 6
    for m in methods:
        s = np.array([float(r[m]) for r in rows])
        got = result["methods"][m]
        assert got["auroc"] == roc_auc_score(labels, s)
        assert got["aupr"] == average_precision_score(labels, s)
        fpr95 = min(np.mean(s[labels == 0] >= t) for t in np.unique(s)
                    if np.mean(s[labels == 1] >= t) >= 0.95)
        assert got["fpr95"] == pytest.approx(fpr95, abs=1e-15)
        assert (out / f"hist_{m}.png").is_file()
    assert result["methods"]["mahalanobis"]["auroc"] > 0.9


def _assert_clean_error(capsys, out: Path, needle: str, code: int) -> None:
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_bad_inputs_are_clear_errors_and_write_nothing(tiny_pipeline_dir, tmp_path, image_sets,
                                                        capsys) -> None:
    model = str(tiny_pipeline_dir("sd15"))
    out = tmp_path / "never"
    base = ["--model", model, "--size", SIZE, "--steps", "4", "--out", str(out)]
    code = run(["latent", "interpolate", *base, "--prompt", "a cat", "--frames", "1"])
    _assert_clean_error(capsys, out, "at least 2 frames", code)
    code = run(["latent", "direction", *base, "--prompt", "a cat", "--positive", "happy", "--negative", "sad",
                "--scales", "-1,big,1", "--clip-model", "none"])
    _assert_clean_error(capsys, out, "'big' is not a number", code)
    code = run(["latent", "ood", *base, "--reference", str(image_sets["few"]), "--test",
                str(image_sets["test"])])
    _assert_clean_error(capsys, out, "only 3 reference images", code)
    code = run(["latent", "interpolate", *base, "--prompt", "a cat", "--method", "nlerp"])
    _assert_clean_error(capsys, out, "unknown --method", code)
    code = run(["latent", "interpolate", *base, "--prompt", "a cat", "--size", "30"])
    _assert_clean_error(capsys, out, "not a positive multiple", code)
    code = run(["latent", "encode", str(image_sets["mixed"]), "--model", model, "--out", str(out / "z.pt")])
    _assert_clean_error(capsys, out, ".npz or .safetensors", code)


def test_model_without_vae_is_a_clear_error(tiny_pipeline_dir, tmp_path, image_sets, capsys) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = tmp_path / "ddpm"
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(str(folder))
    out = tmp_path / "never"
    code = run(["latent", "encode", str(image_sets["mixed"]), "--model", str(folder), "--out",
                str(out / "z.npz")])
    _assert_clean_error(capsys, out, "has no VAE", code)
