"""PickScore: difflens's extractor + metric against the model card's computation (github.com/yuvalkirstain/
PickScore README, ``calc_probs``) done directly with transformers, on a tiny random ``CLIPModel`` saved with
``save_pretrained`` (with its CLIP tokenizer and processor), loaded back through ``--pickscore-model DIR``.

The reference is the model card's code with the two changes transformers 5 forces: ``get_*_features``
return an output object (the card's tensor is its ``pooler_output``), and the processor is loaded with
``backend="pil"``, the PIL resize of the transformers 4.27 the card ran with (transformers 5's default
torchvision backend gives other pixels; the test shows they differ, so the choice is visible).

Tolerance 1e-5 relative (and 1e-5 absolute for scores near 0): both sides run the same transformers model
in float32 but not the same code (difflens normalizes the image itself and takes a row-wise dot product, the
card a matrix product), so float32 rounding (about 1e-7) may differ; a wrong resize, crop or normalization
moves the scores by far more.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch
from image_helpers import structured_images

PROMPTS = ["a photo of a cat", "a red car", "a dog in the snow", " ".join(["cat"] * 90)]
SIZE = 64  # the tiny model's crop (the processing reads it from the processor config)


def _images() -> list[np.ndarray]:
    return structured_images([(40, 48), (130, 90), (64, 64), (97, 301), (65, 64), (250, 250), (31, 17),
                              (200, 120)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from difflens.tiny_encoders import build_tiny_clip

    out = tmp_path_factory.mktemp("pickscore") / "model"
    model, processor = build_tiny_clip(seed=3, image_size=SIZE)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # PickScore's learned scale is about 100
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out


def _card(folder: Path, prompt: str, images: list[np.ndarray], backend: str = "pil") -> np.ndarray:
    """The model card's calc_probs, returning the scores (before the softmax) and on CPU."""
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder), backend=backend)
    model = AutoModel.from_pretrained(str(folder)).eval()

    def tensor(out):  # transformers 5: an output object, transformers 4: the tensor itself
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    pil = [Image.fromarray(im) for im in images]
    image_inputs = processor(images=pil, padding=True, truncation=True, max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embs = tensor(model.get_image_features(**image_inputs))
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = tensor(model.get_text_features(**text_inputs))
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
    return scores.numpy().astype(np.float64)


def _reference(folder: Path, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
    return np.array([_card(folder, p, [im])[0] for im, p in zip(images, prompts, strict=True)])


def test_scores_equal_the_model_card(tiny: Path) -> None:
    from difflens.features.pickscore import load_pickscore

    images = _images()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    ref = _reference(tiny, images, prompts)
    ext = load_pickscore(str(tiny), device="cpu", offline=True)
    assert ext.processor_id == str(tiny)  # the folder's own tokenizer and processor config
    got = ext.forward([ext.prepare(im) for im in images], prompts=prompts)["score"][:, 0].astype(np.float64)
    assert np.ptp(ref) > 1.0  # the scores spread: agreement is not trivially constant
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # transformers 5's default (torchvision) processor gives other numbers: the PIL choice matters
    fast = np.array([_card(tiny, p, [im], backend="torchvision")[0]
                     for im, p in zip(images, prompts, strict=True)])
    assert np.max(np.abs(fast - ref)) > 1e-4


def test_softmax_preference_equals_the_model_card_probs(tiny: Path) -> None:
    import torch

    from difflens.metrics.base import create_metric

    images = _images()
    prompts = ["a red car"] * 3 + ["a photo of a cat"] * 5
    metric = create_metric("pickscore", model=str(tiny))
    (ext,) = metric.build_extractors("cpu", offline=True).values()
    for s in range(0, len(images), 3):  # batches cut across the prompt groups
        feats = ext.forward([ext.prepare(im) for im in images[s:s + 3]], prompts=prompts[s:s + 3])
        metric.update(FeatureBatch(False, {("pickscore", "score"): feats["score"]}, prompts[s:s + 3]))
    res = metric.compute(ComputeContext(bootstrap=40, seed=0))["pickscore"]
    probs = {p: torch.softmax(torch.from_numpy(_card(tiny, p, [im for im, q in zip(images, prompts,
                                                                                    strict=True) if q == p])),
                              dim=-1).numpy() for p in set(prompts)}
    got = metric.preferences()
    for p, pr in probs.items():
        idx = [i for i in range(8) if prompts[i] == p]
        np.testing.assert_allclose(got[idx], pr, rtol=1e-5, atol=1e-7)
        row = res.fields["per_prompt"][p]
        assert row["count"] == len(idx)
        np.testing.assert_allclose(row["preference"], sorted(pr, reverse=True), rtol=1e-5, atol=1e-7)
    assert math.isclose(sum(res.fields["per_prompt"]["a red car"]["preference"]), 1.0, rel_tol=1e-12)
    all_scores = np.concatenate([_card(tiny, p, [images[i]]) for i, p in enumerate(prompts)])
    assert math.isclose(res.value, float(all_scores.mean()), rel_tol=1e-5)
    assert res.fields["scale"] == "logit_scale.exp() * cos" and len(res.fields["ci95"]) == 2


def test_fingerprint_names_weights_and_processing(tiny: Path) -> None:
    from difflens.features.pickscore import load_pickscore
    from difflens.metrics.feature_cache import weights_digest

    fp = load_pickscore(str(tiny), device="cpu", offline=True).fingerprint("score").to_dict()
    assert fp["weights_sha256"] == weights_digest(tiny)
    assert "PIL bicubic" in fp["preprocessing"] and "logit_scale" in fp["feature_layer"]


def test_bad_input_is_one_clear_error(tiny: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from difflens.features.pickscore import load_pickscore
    from difflens.metrics.base import create_metric
    from difflens.tiny_encoders import save_tiny_dinov2

    with pytest.raises(DifflensError, match="not a transformers model folder"):
        load_pickscore(str(tmp_path / "nothing-here"), offline=True)
    dino = save_tiny_dinov2(tmp_path / "dino")
    with pytest.raises(DifflensError, match="'dinov2' model, not a CLIPModel"):
        load_pickscore(str(dino), offline=True)
    with pytest.raises(DifflensError, match="could not load the PickScore model"):
        load_pickscore("nobody/no-such-pickscore", offline=True)
    # a CLIP folder whose weights lack a tensor: transformers would leave it random; difflens refuses
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights.pop("visual_projection.weight")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DifflensError, match=r"1 missing weights \(visual_projection.weight\)"):
        load_pickscore(str(broken), offline=True)
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["model_type"] == "clip"
    resized = tmp_path / "resized"  # the config of another architecture than the weights
    shutil.copytree(tiny, resized)
    for part in (cfg, cfg["text_config"], cfg["vision_config"]):
        part["projection_dim"] = 8
    (resized / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DifflensError, match="weight shapes do not match its config"):
        load_pickscore(str(resized), offline=True)
    m = create_metric("pickscore", model=str(tiny))
    with pytest.raises(DifflensError, match="needs one prompt per generated image"):
        m.update(FeatureBatch(False, {("pickscore", "score"): np.ones((2, 1), np.float32)}, None))
    with pytest.raises(DifflensError, match="2 images but 1 prompts"):
        m.update(FeatureBatch(False, {("pickscore", "score"): np.ones((2, 1), np.float32)}, ["a"]))


def test_difflens_metrics_cli_end_to_end(tiny: Path, tmp_path: Path, capsys: Any) -> None:
    import json

    from PIL import Image

    from cli_helpers import assert_one_line_error, run_cli

    images = _images()[:6]
    fake = tmp_path / "fake"
    fake.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(fake / f"{i:02d}.png")
    (tmp_path / "p.txt").write_text("a red car\na photo of a cat\n")  # cycled over the sorted images
    prompts = ["a red car", "a photo of a cat"] * 3
    ref = _reference(tiny, images, prompts)
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--prompts", str(tmp_path / "p.txt"), "--metrics",
                            "pickscore", "--pickscore-model", str(tiny), "--offline", "--device", "cpu",
                            "--json", str(out)], capsys)
    assert code == 0, err
    entry = json.loads(out.read_text())["metrics"]["pickscore"]
    assert entry["value"] == pytest.approx(float(ref.mean()), rel=1e-5) and entry["n"] == 6
    assert {p: r["count"] for p, r in entry["per_prompt"].items()} == {"a red car": 3, "a photo of a cat": 3}
    assert sum(entry["per_prompt"]["a red car"]["preference"]) == pytest.approx(1.0)
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--prompts", str(tmp_path / "p.txt"), "--metrics",
                            "pickscore", "--pickscore-model", str(tmp_path / "none"), "--offline"], capsys)
    assert_one_line_error(code, err, "--pickscore-model")
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "pickscore", "--pickscore-model",
                            str(tiny), "--offline"], capsys)
    assert_one_line_error(code, err, "no prompts")
