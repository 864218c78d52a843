"""imagereward: agreement with the reference implementation (pip ``image-reward`` 1.5, THUDM/ImageReward) at a
tiny random configuration, the strict checkpoint loading, and the bad inputs.

The reference runs here with the smallest shims that let it import and run on transformers 5, applied only
inside the ``reference`` fixture (undone after the module; nothing in src/ is patched):

1. ``ImageReward/__init__.py`` and ``ImageReward/models/__init__.py`` are skipped (the packages are entered
   as bare namespaces): they import OpenAI's ``clip`` (not on PyPI) for the CLIP/Aesthetic baselines and
   the diffusers training script ReFL.py, none of which the reward model uses.
2. ``fairscale.nn.checkpoint.checkpoint_activations.checkpoint_wrapper``: a stub that refuses to run; vit.py
   imports it for gradient checkpointing, which ImageReward never enables.
3. The five transformers helpers med.py needs and transformers 5 removed:
   ``apply_chunking_to_forward`` (chunk size 0: the function itself), ``find_pruneable_heads_and_indices``
   and ``prune_linear_layer`` (head pruning, never called: stubs that refuse), and the ``PreTrainedModel``
   methods ``get_head_mask`` (None -> a None per layer) and ``invert_attention_mask`` (transformers 4's
   ``(1 - mask) * finfo.min``), set on med.py's ``BertModel`` only.
4. ``BertModel.init_weights``: transformers 5's version ties weights through attributes ``post_init``
   sets, which med.py's model never calls; replaced by transformers 4's ``self.apply(self._init_weights)``.
   (Every weight is then overwritten with random values below, so the init itself does not matter.)
5. ``BertTokenizer`` in BLIP's ``blip.py``: ``from_pretrained('bert-base-uncased')`` reads a tiny local
   vocabulary instead of downloading, and ``additional_special_tokens_ids`` (gone in transformers 5) is
   provided; BLIP's own ``init_tokenizer`` then adds ``[DEC]`` and ``[ENC]`` as published.
6. ``create_vit``: BLIP's own ``VisionTransformer`` at a tiny width/depth (ImageReward hard-codes ViT-L).

Tiny configuration: ViT width 32, 2 blocks, 4 heads, at the published 224 px and 16 px patches; BERT of the
published width 768 (ImageReward hard-codes ``MLP(768)``), 2 layers, 12 heads, FFN 64. EVERY parameter is
then drawn at random (weights ~ N(0, 1/fan_in), biases and LayerNorm shifts non-zero), the reward MLP
included: its published init is ~N(0, 1/769) with zero biases, so scores would be a near-constant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from difflens.errors import DifflensError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "red", "blue", "green", "circle", "square",
         "triangle", "on", "the", "left", "right", "of", "##s", "photo", "cat", "dog", "big", "small", "and",
         "with", "above", "below", ",", "."]
TEXT = {"hidden_size": 768, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 64,
        "vocab_size": len(VOCAB) + 2, "max_position_embeddings": 40, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "pad_token_id": 0, "encoder_width": 768, "add_cross_attention": True,
        "type_vocab_size": 2, "initializer_range": 0.02, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "model_type": "bert", "architectures": ["BertModel"]}
VISION = {"vision_width": 32, "vision_layers": 2, "vision_heads": 4}
PROMPTS = ["a red circle on the left", "A BIG blue Square , above a small green triangle",
           "a photo of a cat and a dog", "zebra",  # unknown word -> [UNK]
           " ".join(["a red circle and a blue square"] * 6)]  # longer than 35 tokens: truncated
SIZES = [(224, 224), (300, 200), (200, 333), (64, 100), (225, 227)]  # (H, W): crop, upscale, odd offsets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny vocabulary saved as a tokenizer folder, the med_config.json and difflens's config dict."""
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("imagereward")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(str(root / "tokenizer"))
    (root / "med_config.json").write_text(json.dumps(TEXT))
    (root / "difflens_config.json").write_text(json.dumps({**TEXT, **VISION}))
    return {"root": root, "tokenizer": str(root / "tokenizer"), "med_config": str(root / "med_config.json"),
            "config": str(root / "difflens_config.json")}


def _shim_and_import(mp: pytest.MonkeyPatch, tokenizer_dir: str) -> types.ModuleType:
    """Import ImageReward.ImageReward with the documented shims (module docstring); return the module."""
    import transformers.modeling_utils as tmu
    from transformers import BertTokenizer

    spec = importlib.util.find_spec("ImageReward")
    assert spec is not None and spec.origin, "image-reward is not installed (requirements-test-nodeps.txt)"
    site = Path(spec.origin).parent
    for name, path in (("ImageReward", site), ("ImageReward.models", site / "models")):  # shim 1
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        mp.setitem(sys.modules, name, pkg)

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a shimmed helper the reward model never needs was called")

    ckpt = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")  # shim 2
    ckpt.checkpoint_wrapper = refuse  # type: ignore[attr-defined]
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
        mp.setitem(sys.modules, name, types.ModuleType(name))
    mp.setitem(sys.modules, ckpt.__name__, ckpt)

    def apply_chunking_to_forward(fn: Any, chunk_size: int, dim: int, *inputs: Any) -> Any:  # shim 3
        assert chunk_size == 0, "chunked feed-forward is not shimmed"
        return fn(*inputs)

    mp.setattr(tmu, "apply_chunking_to_forward", apply_chunking_to_forward, raising=False)
    mp.setattr(tmu, "find_pruneable_heads_and_indices", refuse, raising=False)
    mp.setattr(tmu, "prune_linear_layer", refuse, raising=False)
    with warnings.catch_warnings():  # blip.py calls warnings.filterwarnings("ignore") at import
        import transformers

        verbosity = transformers.logging.get_verbosity()
        module = importlib.import_module("ImageReward.ImageReward")
        transformers.logging.set_verbosity(verbosity)  # blip_pretrain.py sets it to error at import
    med = sys.modules["ImageReward.models.BLIP.med"]

    def invert_attention_mask(self: Any, mask: torch.Tensor) -> torch.Tensor:
        ext = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).to(dtype=self.dtype)
        return (1.0 - ext) * torch.finfo(self.dtype).min

    def get_head_mask(self: Any, head_mask: Any, num_layers: int, is_attention_chunked: bool = False) -> Any:
        assert head_mask is None, "head masks are not shimmed"
        return [None] * num_layers

    mp.setattr(med.BertModel, "invert_attention_mask", invert_attention_mask, raising=False)
    mp.setattr(med.BertModel, "get_head_mask", get_head_mask, raising=False)
    mp.setattr(med.BertModel, "init_weights", lambda self: self.apply(self._init_weights))  # shim 4

    class LocalBertTokenizer(BertTokenizer):  # shim 5
        @classmethod
        def from_pretrained(cls, name: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            assert name == "bert-base-uncased", name
            return super().from_pretrained(tokenizer_dir, local_files_only=True)

        @property
        def additional_special_tokens_ids(self) -> list[int]:
            return self.convert_tokens_to_ids(["[ENC]"])

    mp.setattr(sys.modules["ImageReward.models.BLIP.blip"], "BertTokenizer", LocalBertTokenizer)
    vit = sys.modules["ImageReward.models.BLIP.vit"]

    def create_vit(kind: str, image_size: int, *args: Any) -> tuple[Any, int]:  # shim 6
        assert kind == "large"  # ImageReward's choice; the same class at a tiny size
        width = VISION["vision_width"]
        return vit.VisionTransformer(img_size=image_size, patch_size=16, embed_dim=width,
                                     depth=VISION["vision_layers"], num_heads=VISION["vision_heads"],
                                     drop_path_rate=0.1), width

    mp.setattr(sys.modules["ImageReward.models.BLIP.blip_pretrain"], "create_vit", create_vit)
    return module


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter at random: weights N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorm scale 1 + N(0,
    0.1^2), embeddings / class token / positions N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim >= 2 and not any(k in name for k in ("embeddings", "pos_embed", "cls_token")):
                p.copy_(noise / np.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * noise)


@pytest.fixture(scope="module")
def reference(tiny: dict[str, Any]) -> Any:
    """(the reference ImageReward model, the path of its state dict saved as ImageReward.pt)."""
    before = set(sys.modules)
    mp = pytest.MonkeyPatch()
    try:
        module = _shim_and_import(mp, tiny["tokenizer"])
        torch.manual_seed(0)
        model = module.ImageReward(med_config=tiny["med_config"], device="cpu").eval()
        _randomize(model, seed=1)
        path = tiny["root"] / "ImageReward.pt"
        torch.save(model.state_dict(), path)
        yield model, path
    finally:
        mp.undo()
        for name in set(sys.modules) - before:
            if name.startswith(("ImageReward", "fairscale")):
                del sys.modules[name]


def _images(seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (a gradient plus noise) of the sizes in SIZES."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * rng.uniform(80, 255, 3)
        out.append(np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def _load(path: Any, tiny: dict[str, Any], **kw: Any) -> Any:
    from difflens.features.imagereward import load_imagereward

    return load_imagereward(path, tokenizer=tiny["tokenizer"], config=kw.pop("config", tiny["config"]),
                            device="cpu", **kw)


def test_scores_agree_with_the_reference_implementation(reference: Any, tiny: dict[str, Any]) -> None:
    """difflens's scores (one batch, prompts padded together) equal ImageReward.score(prompt, image), one
    call per image, to 1e-5 relative (each score, with a floor of 1e-5 of the largest magnitude, since one
    score may sit near 0). Not bit-equal: another attention kernel (SDPA) and batch shapes change the
    float32 summation order (measured: at most 1e-6 of the largest score), far below 1e-5."""
    from PIL import Image

    model, path = reference
    images = _images()
    ref = np.array([model.score(p, Image.fromarray(im)) for p, im in zip(PROMPTS, images, strict=True)])
    got = _load(path, tiny)(images, prompts=PROMPTS)["score"]
    assert got.shape == (len(images), 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # not trivially constant: the scores differ across images far beyond the tolerance
    assert np.ptp(ref) > 1e-2 * np.abs(ref).max()
    # and the image matters, not only the prompt: one prompt, different images
    same = _load(path, tiny)(images, prompts=[PROMPTS[0]] * len(images))["score"][:, 0]
    ref_same = np.array([model.score(PROMPTS[0], Image.fromarray(im)) for im in images])
    np.testing.assert_allclose(same, ref_same, rtol=1e-5, atol=1e-5 * np.abs(ref_same).max())
    assert np.ptp(ref_same) > 1e-3 * np.abs(ref_same).max()


def test_half_precision_autocast_stays_near_float32(reference: Any, tiny: dict[str, Any]) -> None:
    """--preference-dtype bfloat16 runs the network under autocast (weights and reward head float32): the
    scores stay within 5% of the float32 scores' range (bfloat16 keeps 8 bits of mantissa; measured
    0.8% here); an unknown dtype is refused when the metric is made, before any weights."""
    from difflens.metrics.base import create_metric

    _, path = reference
    images = _images()
    full = _load(path, tiny)(images, prompts=PROMPTS)["score"][:, 0]
    half = _load(path, tiny, dtype="bfloat16")(images, prompts=PROMPTS)["score"][:, 0]
    assert np.abs(half - full).max() < 0.05 * np.ptp(full)
    with pytest.raises(DifflensError, match="--preference-dtype"):
        create_metric("imagereward", dtype="float8")


def test_preprocessing_equals_the_reference_transform(reference: Any, tiny: dict[str, Any]) -> None:
    """prepare() equals ImageReward's torchvision transform (Resize 224 bicubic, CenterCrop, ToTensor,
    Normalize). Same PIL resize; the float steps are IEEE-rounded in numpy vs torch: 1e-6 absolute."""
    from PIL import Image

    model, path = reference
    ext = _load(path, tiny)
    for im in _images(seed=3):
        ref = model.preprocess(Image.fromarray(im)).numpy()
        got = ext.prepare(im)
        assert got.shape == ref.shape == (3, 224, 224)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_tokens_equal_the_reference_tokenizer(reference: Any, tiny: dict[str, Any]) -> None:
    model, path = reference
    ids, mask = _load(path, tiny).tokenize(PROMPTS)
    ref = model.blip.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35,
                               return_tensors="pt")
    assert torch.equal(ids, ref.input_ids) and torch.equal(mask, ref.attention_mask)
    assert ids.shape == (len(PROMPTS), 35) and int(mask[-1].sum()) == 35  # the long prompt was truncated


def test_metric_mean_interval_and_per_prompt(reference: Any, tiny: dict[str, Any]) -> None:
    """The metric built as the route builds it (metric options -> build_extractors) gives the mean of the
    reference's scores, a bootstrap interval around it and the per-prompt means."""
    from PIL import Image

    from difflens.metrics.base import ComputeContext, FeatureBatch, create_metric

    model, path = reference
    images = _images(seed=5) * 2
    prompts = [PROMPTS[i % 2] for i in range(len(images))]
    metric = create_metric("image-reward", checkpoint=str(path), tokenizer=tiny["tokenizer"],
                           config=tiny["config"])
    ext = metric.build_extractors("cpu", offline=True)["imagereward"]
    for s in range(0, len(images), 3):
        feats = ext(images[s:s + 3], prompts=prompts[s:s + 3])
        metric.update(FeatureBatch(False, {("imagereward", "score"): feats["score"]}, prompts[s:s + 3]))
    res = metric.compute(ComputeContext(bootstrap=200, seed=0))["imagereward"]
    ref = np.array([model.score(p, Image.fromarray(im)) for p, im in zip(prompts, images, strict=True)])
    assert res.value == pytest.approx(ref.mean(), rel=1e-5, abs=1e-5 * np.abs(ref).max())
    lo, hi = res.fields["ci95"]
    assert lo < res.value < hi and res.fields["n"] == len(images)
    for p in set(prompts):
        rows = [i for i, q in enumerate(prompts) if q == p]
        assert res.fields["per_prompt"][p]["count"] == len(rows)
        assert res.fields["per_prompt"][p]["mean"] == pytest.approx(ref[rows].mean(), rel=1e-5,
                                                                     abs=1e-5 * np.abs(ref).max())
    assert "z-scored" in res.fields["scale"]


def test_fingerprint_records_the_checkpoint_sha256(reference: Any, tiny: dict[str, Any]) -> None:
    _, path = reference
    fp = _load(path, tiny).fingerprint("score").to_dict()
    assert fp["weights_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert "0.16717362830052426" in fp["feature_layer"] and '"vision_width":32' in fp["extractor"]
    assert json.loads(fp["preprocessing"])["mean"] == [0.48145466, 0.4578275, 0.40821073]


def test_published_config_is_the_med_config_and_vit_large() -> None:
    from difflens.features.imagereward_model import ImageRewardConfig, expected_shapes, read_config

    cfg = read_config(None)
    assert cfg == ImageRewardConfig() and cfg.is_published()
    shapes = expected_shapes(cfg)
    assert shapes["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (768, 1024)
    assert shapes["blip.text_encoder.embeddings.word_embeddings.weight"] == (30524, 768)
    assert shapes["mlp.layers.7.weight"] == (1, 16) and "mlp.layers.1.weight" not in shapes
    n = sum(int(np.prod(s)) for s in shapes.values())
    assert 440e6 < n < 480e6  # ViT-L (303M) + BERT-base with cross-attention (~140M) + heads


# -------------------------------------------------------------------------------------------- bad input


def _resave(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_missing_and_unexpected_keys_are_one_error_each(reference: Any, tiny: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import difflens.features.imagereward_model as irm

    model, _ = reference
    state = model.state_dict()
    monkeypatch.setattr(irm, "build_model", lambda *a, **k: pytest.fail("built before the check"))
    missing = {k: v for k, v in state.items() if k != "mlp.layers.4.bias"}
    with pytest.raises(DifflensError, match=r"1 missing key\(s\) \(mlp\.layers\.4\.bias\)"):
        _load(_resave(missing, tmp_path / "missing.pt"), tiny)
    extra = {**state, "blip.itm_head.weight": torch.zeros(2, 768)}
    with pytest.raises(DifflensError, match=r"1 unexpected key\(s\) \(blip\.itm_head\.weight\)"):
        _load(_resave(extra, tmp_path / "extra.pt"), tiny)
    bad_pos = {**state, "blip.text_encoder.embeddings.position_ids": torch.zeros(1, 40, dtype=torch.long)}
    with pytest.raises(DifflensError, match="position_ids"):
        _load(_resave(bad_pos, tmp_path / "pos.pt"), tiny)


def test_checkpoint_of_another_architecture_is_one_error(reference: Any, tiny: dict[str, Any],
                                                         tmp_path: Path) -> None:
    _, path = reference
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**TEXT, **VISION, "vision_width": 64}))
    with pytest.raises(DifflensError, match=r"another size .* e\.g\. blip\.visual_encoder\.cls_token"):
        _load(path, tiny, config=str(wider))
    with pytest.raises(DifflensError, match=r"missing key\(s\) \(blip\.visual_encoder\.blocks\.2"):
        _load(path, tiny, config=TEXT)  # the published ViT-L depth against a 2-block file


def test_unusable_files_and_options_are_one_error_each(tiny: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from difflens.features.imagereward import load_imagereward

    with pytest.raises(DifflensError, match="does not exist"):  # before the tokenizer is even looked for
        load_imagereward(tmp_path / "nope.pt", tokenizer=str(tmp_path / "no-tokenizer"), offline=True)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(DifflensError, match="cannot be read as a torch state dict"):
        _load(tmp_path / "text.pt", tiny)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(DifflensError, match="not a state dict of tensors"):
        _load(tmp_path / "list.pt", tiny)
    with pytest.raises(DifflensError, match="unknown key"):
        _load(tmp_path / "list.pt", tiny, config={**TEXT, "vision_witdh": 32})
    with pytest.raises(DifflensError, match="more than the network's vocabulary"):
        _load(tmp_path / "list.pt", tiny, config={**TEXT, **VISION, "vocab_size": 10})
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DifflensError, match=r"could not get ImageReward\.pt of THUDM/ImageReward"):
        load_imagereward(None, tokenizer=tiny["tokenizer"], config=tiny["config"], offline=True)


def test_no_prompts_is_one_error(reference: Any, tiny: dict[str, Any]) -> None:
    from difflens.features.extract import feature_batches

    _, path = reference
    ext = _load(path, tiny)
    with pytest.raises(DifflensError, match="no prompts were given"):
        ext.forward([ext.prepare(im) for im in _images()[:2]])
    with pytest.raises(DifflensError, match="2 images but 1 prompts"):
        ext(_images()[:2], prompts=["a cat"])
    with pytest.raises(DifflensError, match="no prompts were given"):
        list(feature_batches(np.stack([_images()[0]] * 2), {"imagereward": ext}, batch_size=2))


# ------------------------------------------------------------------------------------------- end to end


def test_difflens_metrics_cli_end_to_end(reference: Any, tiny: dict[str, Any], tmp_path: Path,
                                         capsys: Any) -> None:
    """``difflens metrics --metrics imagereward`` on a folder with a manifest: the JSON entry is the mean
    of the reference's scores of the same images (PNG is lossless), with its interval, the per-prompt
    table and the checkpoint's SHA-256 in the protocol; bad input is one line, nothing written."""
    from PIL import Image

    from cli_helpers import assert_one_line_error, run_cli

    model, path = reference
    images, prompts = _images(seed=7)[:4], [PROMPTS[i % 2] for i in range(4)]
    fake = tmp_path / "fake"
    fake.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(fake / f"{i:02d}.png")
    (fake / "manifest.jsonl").write_text("".join(json.dumps({"file": f"{i:02d}.png", "prompt": p}) + "\n"
                                                 for i, p in enumerate(prompts)))
    ref = np.array([model.score(p, Image.fromarray(im)) for p, im in zip(prompts, images, strict=True)])
    opts = ["--imagereward-tokenizer", tiny["tokenizer"], "--imagereward-config", tiny["config"],
            "--offline", "--device", "cpu"]
    out = tmp_path / "m.json"
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "imagereward",
                            "--imagereward-checkpoint", str(path), *opts, "--bootstrap", "30",
                            "--json", str(out)], capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    entry = rec["metrics"]["imagereward"]
    assert entry["value"] == pytest.approx(float(ref.mean()), rel=1e-5, abs=1e-5 * np.abs(ref).max())
    assert entry["n"] == 4 and len(entry["ci95"]) == 2 and set(entry["per_prompt"]) == set(prompts)
    fp = rec["protocol"]["features"]["imagereward"]["extractors"]["imagereward"]["score"]
    assert fp["weights_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    # a checkpoint with a missing key: one line naming it, no JSON written
    state = {k: v for k, v in model.state_dict().items() if k != "blip.text_proj.bias"}
    bad, out2 = _resave(state, tmp_path / "bad.pt"), tmp_path / "m2.json"
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "imagereward",
                            "--imagereward-checkpoint", str(bad), *opts, "--json", str(out2)], capsys)
    assert_one_line_error(code, err, "blip.text_proj.bias", "missing")
    assert not out2.exists()
    (fake / "manifest.jsonl").unlink()  # no prompts
    code, _, err = run_cli(["metrics", "--fake", str(fake), "--metrics", "imagereward",
                            "--imagereward-checkpoint", str(path), *opts, "--json", str(out2)], capsys)
    assert_one_line_error(code, err, "imagereward", "prompts")
    assert not out2.exists()
