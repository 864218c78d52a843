"""CLIP score, CMMD and FD-DINOv2 equal direct computations from the transformers models' outputs on the
same (tiny, random, saved in the standard format) weights; the per-prompt breakdown averages back to the
overall score; the feature cache never serves stale features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.metrics.clip import ClipEncoder, compute_clip_score, per_prompt_breakdown
from difflens.metrics.cmmd import cmmd_from_embeddings, compute_cmmd
from difflens.metrics.dinov2 import compute_fd_dinov2
from difflens.metrics.feature_cache import FeatureCache, resample_indices

PROMPTS = ["a photo of a cat", "a red car", "a dog in the snow", " ".join(["cat"] * 90)]  # last: > 77 tokens


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from difflens.tiny_encoders import save_tiny_clip, save_tiny_dinov2

    root = tmp_path_factory.mktemp("encoders")
    return {"clip": save_tiny_clip(root / "clip"), "dinov2": save_tiny_dinov2(root / "dinov2")}


def _images(n: int, seed: int, shape: tuple[int, int] = (40, 48)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, *shape, 3))
    # correlated images (a shared base plus noise) so the kernels and features are not degenerate
    return [np.clip(base + rng.integers(-60, 60, (*shape, 3)), 0, 255).astype(np.uint8)[0] for _ in range(n)]


def test_clip_score_equals_transformers_direct(encoders: dict[str, Path]) -> None:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    imgs = _images(12, 0)
    prompts = [PROMPTS[i % 4] for i in range(12)]
    res = compute_clip_score(imgs, prompts, clip_model=str(encoders["clip"]), device="cpu", per_prompt=True,
                             lowest=2)

    model = CLIPModel.from_pretrained(str(encoders["clip"])).eval()
    proc = CLIPProcessor.from_pretrained(str(encoders["clip"]))
    inputs = proc(text=prompts, images=[Image.fromarray(a) for a in imgs], return_tensors="pt", padding=True,
                  truncation=True, max_length=77)
    with torch.no_grad():
        out = model(**inputs)
    cos = (out.image_embeds * out.text_embeds).sum(-1).double()
    direct = 100 * cos.clamp(min=0)
    assert (cos < 0).any() or (cos > 0).all()  # the max(cos, 0) is exercised when any cos is negative
    np.testing.assert_allclose(res.per_sample, direct.numpy(), rtol=1e-5, atol=1e-4)
    assert res.value == pytest.approx(float(direct.mean()), rel=1e-5)
    assert res.truncated_prompts == 1

    bd = res.per_prompt
    assert bd is not None
    assert bd.weighted_mean() == pytest.approx(res.value, rel=1e-12)
    assert sum(p.count for p in bd.prompts) == 12
    for p in bd.prompts:
        idx = [i for i, q in enumerate(prompts) if q == p.prompt]
        assert p.clip_score == pytest.approx(float(direct[idx].mean()), rel=1e-5, abs=1e-4)
    assert len(bd.lowest) == 2 and bd.lowest[0].clip_score <= bd.lowest[1].clip_score
    assert bd.lowest[0].clip_score == min(p.clip_score for p in bd.prompts)


def test_per_prompt_breakdown_sums_back() -> None:
    rng = np.random.default_rng(1)
    prompts = [f"p{rng.integers(0, 7)}" for _ in range(101)]
    scores = rng.uniform(0, 40, 101)
    bd = per_prompt_breakdown(prompts, scores, lowest=3)
    assert sum(p.count * p.clip_score for p in bd.prompts) == pytest.approx(scores.sum(), rel=1e-12)
    assert bd.overall == pytest.approx(scores.mean(), rel=1e-12)
    assert [p.clip_score for p in bd.lowest] == sorted(p.clip_score for p in bd.prompts)[:3]


def _mmd_reference(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """google-research/cmmd distance.mmd, in float64 with full matrices."""
    x_sq, y_sq = np.diag(x @ x.T), np.diag(y @ y.T)
    gamma = 1 / (2 * sigma**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * x @ x.T + x_sq[:, None] + x_sq[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * x @ y.T + x_sq[:, None] + y_sq[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * y @ y.T + y_sq[:, None] + y_sq[None, :])))
    return 1000 * (k_xx + k_yy - 2 * k_xy)


def test_cmmd_equals_reference_on_transformers_embeddings(encoders: dict[str, Path]) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    real, fake = _images(10, 2), _images(9, 3)
    res = compute_cmmd(real, fake, clip_model=str(encoders["clip"]), device="cpu")

    model = CLIPVisionModelWithProjection.from_pretrained(str(encoders["clip"])).eval()
    ip = CLIPImageProcessor.from_pretrained(str(encoders["clip"]))
    size = ip.crop_size["height"]

    def embed(images: list[np.ndarray]) -> np.ndarray:  # google-research/cmmd embedding.py
        x = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic")
        mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        with torch.no_grad():
            e = model(pixel_values=(x - mean) / std).image_embeds.double()
        return (e / torch.linalg.norm(e, dim=-1, keepdim=True)).numpy()

    expected = _mmd_reference(embed(real), embed(fake))
    assert expected > 0
    assert res.value == pytest.approx(expected, rel=1e-5)


def test_cmmd_blockwise_and_bootstrap_equal_direct() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 8)), rng.normal(0.3, 1.0, size=(40, 8))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    full = cmmd_from_embeddings(x, y)
    tiny_blocks = cmmd_from_embeddings(x, y, block_bytes=8 * 40 * 3, bootstrap=25, seed=5)  # 3-row blocks
    assert full.value == pytest.approx(_mmd_reference(xn, yn), rel=1e-10)
    assert tiny_blocks.value == pytest.approx(full.value, rel=1e-10)
    direct = [_mmd_reference(xn, yn[idx]) for idx in resample_indices(40, 25, 5)]  # explicit resamples
    assert tiny_blocks.ci95 == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])), rel=1e-9)
    with pytest.raises(DifflensError, match="dimensions differ"):
        cmmd_from_embeddings(x, y[:, :4])


def test_fd_dinov2_equals_fid_formula_on_transformers_features(encoders: dict[str, Path]) -> None:
    import scipy.linalg
    import torch
    from PIL import Image
    from torchvision import transforms
    from transformers import Dinov2Model

    real, fake = _images(24, 6, (32, 32)), _images(20, 7, (30, 36))  # more samples than the 16-d features
    res = compute_fd_dinov2(real, fake, dinov2_model=str(encoders["dinov2"]), device="cpu")

    model = Dinov2Model.from_pretrained(str(encoders["dinov2"])).eval()
    tf = transforms.Compose([
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])

    def feats(images: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = model(pixel_values=torch.stack([tf(Image.fromarray(a)) for a in images]))
        return out.pooler_output.double().numpy()  # the CLS token after the final layer norm

    a, b = feats(real), feats(fake)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert expected > 0
    assert res.value == pytest.approx(expected, rel=1e-5)


def test_feature_cache_hits_and_never_serves_stale(encoders: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for i, a in enumerate(_images(4, 8)):
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    cache = FeatureCache(tmp_path / "cache")
    enc = ClipEncoder.load(str(encoders["clip"]), device="cpu")
    first = enc.image_features(paths, "processor", cache)
    assert (cache.hits, cache.misses) == (0, 1) and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = enc.image_features(paths, "processor", cache)
    assert cache.hits == 1 and np.array_equal(first, again)
    # another protocol is another key
    enc.image_features(paths, "cmmd-resize", cache)
    assert cache.misses == 2
    # change one image's pixels: the cached features must not be used
    Image.fromarray(_images(1, 99)[0]).save(paths[2])
    changed = enc.image_features(paths, "processor", cache)
    assert cache.misses == 3
    # bit for bit: the same batch shape through the same model, and no op mixes images within a batch
    assert np.array_equal(changed[[0, 1, 3]], first[[0, 1, 3]]) and not np.array_equal(changed[2], first[2])
    # a cache file holding another key (tampered or colliding) is a miss, not a hit
    import json

    from difflens.metrics.feature_cache import FeatureKey

    key = FeatureKey("x", "m", "w", {}, "float32", "cpu", "d", 2)
    cache.save(key, np.zeros((2, 3)))
    other = FeatureKey("x", "m", "w", {}, "float32", "cpu", "d", 2, extra={"v": json.dumps(1)})
    import shutil

    shutil.copy(cache.path(key), cache.path(other))
    assert cache.load(other) is None and cache.load(key) is not None


def test_clip_model_missing_offline() -> None:
    with pytest.raises(DifflensError, match="could not load the CLIP model"):
        ClipEncoder.load("difflens-test/no-such-clip", device="cpu", offline=True)


def test_generate_then_evaluate_all_embedding_metrics(tiny_pipeline_dir: Callable[[str], Path],
                                                      encoders: dict[str, Path], tmp_path: Path) -> None:
    """The generate -> evaluate path: prompts come from the manifest; one call gives all three metrics."""
    from difflens.generate.api import generate_for_metrics, is_generation_folder, load_generated
    from difflens.metrics.embedding import compute_embedding_metrics

    gen = generate_for_metrics(tiny_pipeline_dir("sdxl"), ["a photo of a cat", "a red car"], 4,
                               tmp_path / "gen", steps=2, height=32, width=32, batch_size=2, device="cpu")
    assert is_generation_folder(tmp_path / "gen") and gen.flagged == 0 and gen.warnings() == []
    assert gen.prompts == ["a photo of a cat", "a red car"] * 2 and len(gen.files) == 4
    assert load_generated(tmp_path / "gen", 3).files == gen.files[:3]
    real = _images(5, 11, (32, 32))
    cache = FeatureCache(tmp_path / "cache")
    kw = dict(fake=gen.files, real=real, prompts=gen.prompts, clip_model=str(encoders["clip"]),
              cmmd_clip_model=str(encoders["clip"]), dinov2_model=str(encoders["dinov2"]), device="cpu",
              cache=cache)
    res = compute_embedding_metrics("clip,cmmd,fd-dinov2", per_prompt=True, bootstrap=10, **kw)
    assert set(res["metrics"]) == {"clip_score", "cmmd", "fd_dinov2"}
    assert all("ci95" in v for v in res["metrics"].values())
    direct = compute_clip_score(gen.files, gen.prompts, clip_model=str(encoders["clip"]), device="cpu")
    assert res["metrics"]["clip_score"]["value"] == pytest.approx(direct.value, rel=1e-6)
    assert res["metrics"]["cmmd"]["value"] == pytest.approx(
        compute_cmmd(real, gen.files, clip_model=str(encoders["clip"]), device="cpu").value, rel=1e-6)
    pp = res["per_prompt"]
    assert sum(r["count"] * r["clip_score"] for r in pp["prompts"]) / 4 == pytest.approx(
        res["metrics"]["clip_score"]["value"], rel=1e-12)
    assert res["protocol"]["cmmd"]["preprocessing"]["protocol"] == "cmmd-resize"
    assert any("singular" in w for w in res["warnings"])  # 4-5 samples vs 16-d DINOv2 features
    # a second call is served from the feature cache
    hits = cache.hits
    compute_embedding_metrics("cmmd", **kw)
    assert cache.hits == hits + 2


@pytest.mark.parametrize(("metrics", "kwargs", "needle"), [
    ("clip", {"prompts": None}, "needs a prompt for each"),
    ("clip", {"prompts": ["a"]}, "2 generated images but 1 prompts"),
    ("cmmd", {"real": None}, "needs reference images"),
    ("fid", {}, "unknown metric"),
    ("cmmd", {"per_prompt": True}, "--per-prompt"),
])
def test_embedding_metrics_bad_input_before_loading(metrics: str, kwargs: dict, needle: str) -> None:
    from difflens.metrics.embedding import compute_embedding_metrics

    base = dict(fake=_images(2, 0), real=_images(2, 1), prompts=["a", "b"],
                clip_model="difflens-test/never-loaded", offline=True)
    with pytest.raises(DifflensError, match=needle):
        compute_embedding_metrics(metrics, **{**base, **kwargs})
