"""HPSv2: difflens's extractor + metric against the reference package ``hpsv2x`` (HPSv2's own code, with its
vendored open_clip) on a tiny random CLIP.

The reference cannot build a custom architecture through ``hpsv2.score`` (its ``initialize_model`` hard-codes
ViT-H-14 with LAION weights, a download), so the test builds the tiny model with hpsv2's own
``create_model_and_transforms`` (the call ``initialize_model`` makes, our config name instead of ViT-H-14) and
puts it in ``hpsv2.img_score.model_dict``, the cache ``score`` reads; ``score`` itself then runs unchanged:
it loads our checkpoint strictly, preprocesses, tokenizes and scores. The same checkpoint file and config
JSON go through difflens's user path (``--hpsv2-checkpoint``, ``--hpsv2-arch CONFIG.json``).

Tolerance 1e-5 relative on 100 * cos, with 5e-5 absolute (5e-7 in cos) for scores near 0: the two sides
run different code (open_clip 3 vs HPSv2's vendored copy, a batched dot product vs a matmul diagonal) in
float32, whose rounding gives differences near 1e-7 in cos (measured: at most 1.4e-5 on the 100 scale); a
wrong resize, padding, normalization or token moves the scores by far more (checked below: a 1-pixel shift
of the input changes them by over 1e-3).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.base import ComputeContext, FeatureBatch
from image_helpers import structured_images

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
PROMPTS = ["a photo of a cat", "A Red CAR, parked!", "two dogs in the snow", " ".join(["tree"] * 90)]


def _images() -> list[np.ndarray]:
    return structured_images([(40, 48), (300, 200), (224, 224), (97, 301), (64, 64), (250, 250), (31, 17),
                              (512, 384)])


def _hpsv2_ref() -> Any:
    """The reference's scoring module (hpsv2x, requirements-test-nodeps.txt). Its import sets a global
    'ignore UserWarning' filter; the filters are restored so that other tests still see warnings."""
    import importlib

    with warnings.catch_warnings():  # and its vendored code imports timm's deprecated module paths
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module("hpsv2.img_score")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny config as a JSON file and a random checkpoint in HPS's format ({"state_dict": ...}),
    made by hpsv2's own open_clip (as HPS's checkpoints were)."""
    import torch

    hpsv2_ref = _hpsv2_ref()
    from hpsv2.src.open_clip import create_model_and_transforms
    from hpsv2.src.open_clip.factory import add_model_config

    root = tmp_path_factory.mktemp("hpsv2")
    cfg = root / "tiny-hps-clip.json"
    cfg.write_text(json.dumps(TINY))
    add_model_config(cfg)  # hpsv2's own registry (the reference side only)
    torch.manual_seed(0)
    model, _, preprocess_val = create_model_and_transforms(
        "tiny-hps-clip", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    with torch.no_grad():  # a non-trivial logit scale and projections, so scores spread
        model.text_projection.mul_(3.0)
    ckpt = root / "HPS_tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    hpsv2_ref.model_dict.clear()
    hpsv2_ref.model_dict.update(model=model, preprocess_val=preprocess_val)
    return {"config": cfg, "checkpoint": ckpt, "root": root}


def _reference(images: list[np.ndarray], prompts: list[str], ckpt: Path) -> np.ndarray:
    """hpsv2.score per image (it takes one prompt per call): the bare cosine."""
    from PIL import Image

    hpsv2_ref = _hpsv2_ref()
    with warnings.catch_warnings():  # its torch.cuda.amp.autocast() warns on a machine without CUDA
        warnings.simplefilter("ignore")
        return np.array([hpsv2_ref.score([Image.fromarray(im)], p, cp=str(ckpt), hps_version="v2.1")[0]
                         for im, p in zip(images, prompts, strict=True)], dtype=np.float64)


def test_scores_equal_hpsv2_reference(tiny: dict[str, Path]) -> None:
    from difflens.features.hpsv2 import load_hpsv2

    images = _images()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    ref = 100.0 * _reference(images, prompts, tiny["checkpoint"])
    ext = load_hpsv2(str(tiny["checkpoint"]), str(tiny["config"]), "2.1", device="cpu", offline=True)
    got = ext.forward([ext.prepare(im) for im in images], prompts=prompts)["score"][:, 0].astype(np.float64)
    assert np.ptp(ref) > 1.0  # the scores spread: agreement is not trivially constant
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=5e-5)
    # the check has teeth: the padding one pixel off moves the scores by far more than the tolerance
    import torch

    shifted = [torch.roll(ext.prepare(im), 1, dims=2) for im in images]
    off = ext.forward(shifted, prompts=prompts)["score"][:, 0]
    assert np.max(np.abs(off - ref)) > 1e-3


def test_metric_mean_per_prompt_and_fingerprint(tiny: dict[str, Path]) -> None:
    from difflens.hashing import sha256_file
    from difflens.metrics.base import create_metric

    images = _images()
    prompts = [PROMPTS[i % 3] for i in range(len(images))]
    ref = 100.0 * _reference(images, prompts, tiny["checkpoint"])
    metric = create_metric("hpsv2", checkpoint=str(tiny["checkpoint"]), arch=str(tiny["config"]))
    (ext,) = metric.build_extractors("cpu", offline=True).values()
    for s in range(0, len(images), 3):
        chunk = images[s:s + 3]
        feats = ext.forward([ext.prepare(im) for im in chunk], prompts=prompts[s:s + 3])
        metric.update(FeatureBatch(False, {("hpsv2", "score"): feats["score"]}, prompts[s:s + 3]))
    res = metric.compute(ComputeContext(bootstrap=50, seed=1))["hpsv2"]
    assert math.isclose(res.value, float(ref.mean()), rel_tol=1e-5)
    assert res.fields["version"] == "2.1" and res.fields["scale"] == "100 * cos"
    assert res.fields["ci95"][0] <= res.value <= res.fields["ci95"][1]
    for p, row in res.fields["per_prompt"].items():
        sel = ref[[i for i, q in enumerate(prompts) if q == p]]
        assert row["count"] == len(sel) and math.isclose(row["mean"], float(sel.mean()), rel_tol=1e-5)
    fp = ext.fingerprint("score").to_dict()
    assert fp["weights_sha256"] == sha256_file(tiny["checkpoint"])
    assert "HPSv2.1" in fp["extractor"] and "100 * cos" in fp["feature_layer"]


def test_bad_input_is_one_clear_error(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from difflens.features.hpsv2 import load_hpsv2

    ckpt, cfg, root = str(tiny["checkpoint"]), str(tiny["config"]), tiny["root"]
    with pytest.raises(DifflensError, match=r"offline.*--hpsv2-checkpoint FILE"):
        load_hpsv2(None, cfg, offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DifflensError, match=r"HPS_v2_compressed\.pt"):  # the 2.0 file is named for 2.0
        load_hpsv2(None, cfg, version="2.0")
    with pytest.raises(DifflensError, match=r"--hpsv2-checkpoint .*no such file"):
        load_hpsv2(str(root / "missing.pt"), cfg)
    with pytest.raises(DifflensError, match="unknown --hpsv2-version"):
        load_hpsv2(ckpt, cfg, version="3")
    with pytest.raises(DifflensError, match="not an open_clip architecture"):
        load_hpsv2(ckpt, "ViT-Nonexistent-1")
    # the wrong architecture: the real ViT-H-14 config against the tiny checkpoint (nothing is loaded
    # before the keys are compared, so this costs one random ViT-H-14 build, about 1B parameters: the
    # keys check uses a smaller wrong config instead)
    wrong = dict(TINY, vision_cfg=dict(TINY["vision_cfg"], layers=3))
    (root / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(DifflensError, match=r"does not fit .* 1\d* missing keys .*--hpsv2-arch"):
        load_hpsv2(ckpt, str(root / "wrong.json"))
    wider = dict(TINY, embed_dim=8)
    (root / "wider.json").write_text(json.dumps(wider))
    with pytest.raises(DifflensError, match="shape mismatches"):
        load_hpsv2(ckpt, str(root / "wider.json"))
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    sd.pop("logit_scale")
    torch.save({"state_dict": sd}, root / "partial.pt")
    with pytest.raises(DifflensError, match=r"1 missing keys \(logit_scale\)"):
        load_hpsv2(str(root / "partial.pt"), cfg)
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DifflensError, match="cannot read the HPS checkpoint"):
        load_hpsv2(str(root / "junk.pt"), cfg)


def test_metric_refuses_missing_prompts() -> None:
    from difflens.metrics.base import create_metric

    m = create_metric("hpsv2")
    with pytest.raises(DifflensError, match="needs one prompt per generated image"):
        m.update(FeatureBatch(False, {("hpsv2", "score"): np.ones((2, 1), np.float32)}, None))


def _fake_folder(root: Path, images: list[np.ndarray], prompts: list[str]) -> Path:
    from PIL import Image

    folder = root / "fake"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    (folder / "manifest.jsonl").write_text("".join(
        json.dumps({"file": f"{i:02d}.png", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    return folder


def test_difflens_metrics_cli_end_to_end(tiny: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    from cli_helpers import assert_one_line_error, run_cli

    images = _images()[:5]
    prompts = [PROMPTS[i % 2] for i in range(5)]
    fake = _fake_folder(tmp_path, images, prompts)
    ref = 100.0 * _reference(images, prompts, tiny["checkpoint"])  # PNG round trip is lossless
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "hpsv2", "--offline",
                            "--device", "cpu", "--hpsv2-checkpoint", str(tiny["checkpoint"]),
                            "--hpsv2-arch", str(tiny["config"]), "--bootstrap", "30", "--json", str(out)],
                           capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    entry = rec["metrics"]["hpsv2"]
    assert entry["value"] == pytest.approx(float(ref.mean()), rel=1e-5)
    assert entry["n"] == 5 and entry["version"] == "2.1" and len(entry["ci95"]) == 2
    assert set(entry["per_prompt"]) == set(prompts)
    fp = rec["protocol"]["features"]["hpsv2"]["extractors"]["hpsv2"]["score"]
    from difflens.hashing import sha256_file

    assert fp["weights_sha256"] == sha256_file(tiny["checkpoint"])
    # bad input through the CLI: one line each, before any network is built
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "hpsv2", "--offline",
                            "--hpsv2-arch", str(tiny["config"])], capsys)
    assert_one_line_error(code, err, "--hpsv2-checkpoint")
    (fake / "manifest.jsonl").unlink()
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "hpsv2", "--offline",
                            "--hpsv2-checkpoint", str(tiny["checkpoint"])], capsys)
    assert_one_line_error(code, err, "no prompts")
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "hpsv2", "--hpsv2-version", "3",
                            "--prompts", str(tmp_path / "p.txt")], capsys)
    assert_one_line_error(code, err, "--hpsv2-version")
