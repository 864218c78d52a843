"""fd-<extractor> and sFID (difflens.metrics.frechet, difflens.metrics.sfid) and the Inception ``spatial``
layer they read.

Agreement: fd-clip against clean-fid's own ``frechet_distance`` (scipy ``sqrtm``) and the generic class on a
user-registered extractor against a scipy ``sqrtm`` FID, on the same features. The two trace terms are
computed by different algorithms (eigenvalues of L1^T S2 L1 vs a Schur-based matrix square root), so they
agree to float64 rounding amplified by the conditioning, not bit for bit: 1e-7 relative is far above that
(measured ~1e-12 here) and far below any change of the features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.features.base import ExtractorBase, Fingerprint
from difflens.metrics.base import FeatureBatch, create_metric, metric_spec, resolve_metrics

REL = 1e-7


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook FID (TTUR / pytorch-fid): np.cov and scipy.linalg.sqrtm."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _feed(metric: Any, key: tuple[str, str], real: np.ndarray, fake: np.ndarray, batch: int = 64) -> Any:
    for s in range(0, len(real), batch):
        metric.update(FeatureBatch(True, {key: real[s:s + batch]}))
    for s in range(0, len(fake), batch):
        metric.update(FeatureBatch(False, {key: fake[s:s + batch]}))
    return metric


def _sets(n_real: int, n_fake: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = (rng.normal(size=(n_real, dim)) @ mix).astype(np.float32)
    fake = (rng.normal(size=(n_fake, dim)) @ (mix * 1.2) + 0.3).astype(np.float32)
    return real, fake


# ------------------------------------------------------------------------------------------- fd-clip


def test_fd_clip_is_clean_fid_clip_fid_convention() -> None:
    m = create_metric("fd-clip")
    assert m.requirements()[0].key == ("clip:openai/clip-vit-base-patch32", "image_embeds")
    assert m.keys == ("fd_clip",) and metric_spec("fd-clip").group == "features"
    assert create_metric("clip-fid").name == "fd-clip"


def test_fd_clip_equals_clean_fid_frechet_distance() -> None:
    from cleanfid.fid import frechet_distance

    real, fake = _sets(700, 500, 48)  # N > D: both covariances positive definite
    m = _feed(create_metric("fd-clip"), ("clip:openai/clip-vit-base-patch32", "image_embeds"), real, fake)
    got = m.compute()["fd_clip"]
    want = frechet_distance(real.astype(np.float64).mean(0), np.cov(real.astype(np.float64), rowvar=False),
                            fake.astype(np.float64).mean(0), np.cov(fake.astype(np.float64), rowvar=False))
    assert want > 1.0  # a real difference, not two equal sets
    assert got.value == pytest.approx(want, rel=REL)
    assert got.counts == {"n_real": 700, "n_fake": 500}


# ------------------------------------------------------------------------------- a user's extractor


class ToyNet(ExtractorBase):
    """A tiny user network: mean colour and a few pixel statistics (8-d)."""

    name = "toy-net"
    layers = ("feat", "other")

    def __init__(self, device: str | None = None, offline: bool = False, model_id: str | None = None) -> None:
        self.device = "cpu"
        self.model_id = model_id

    def preprocessing(self) -> dict[str, Any]:
        return {"protocol": "toy"}

    def fingerprint(self, layer: str) -> Fingerprint:
        return Fingerprint(protocol="toy", weights_sha256="0" * 64, extractor="toy-net", feature_layer=layer)

    def forward(self, prepared: Any) -> dict[str, Any]:
        x = np.stack([np.asarray(im, np.float32) / 255.0 for im in prepared])
        feat = np.concatenate([x.mean((1, 2)), x.std((1, 2)), x.max((1, 2))[:, :2]], axis=1)
        return {"feat": feat.astype(np.float32), "other": feat[:, :2].astype(np.float32)}


@pytest.fixture
def toy_net() -> Any:
    from difflens.features.registry import register_extractor, unregister_extractor
    from difflens.metrics import base

    register_extractor("toy-net", ToyNet, overwrite=True)
    yield ToyNet
    unregister_extractor("toy-net")
    for name in [n for n in base._REGISTRY if n.startswith("fd-toy-net")]:
        base._REGISTRY.pop(name)


def test_fd_of_a_user_registered_extractor_resolves_and_equals_scipy_fid(toy_net: Any) -> None:
    assert resolve_metrics("fid,FD-toy-net") == ("fid", "fd-toy-net")
    m = create_metric("fd-toy-net")
    assert m.name == "fd-toy-net" and m.keys == ("fd_toy_net",)
    assert m.requirements()[0].key == ("toy-net", "feat")  # the class's first layer
    rng = np.random.default_rng(3)
    real_img = rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    fake_img = np.clip(rng.integers(0, 256, size=(50, 16, 16, 3)) * 0.8 + 20, 0, 255).astype(np.uint8)
    net = ToyNet()
    real, fake = net(real_img)["feat"], net(fake_img)["feat"]
    got = _feed(m, ("toy-net", "feat"), real, fake, batch=7).compute()["fd_toy_net"].value
    assert got == pytest.approx(_scipy_fd(real, fake), rel=REL)
    assert create_metric("fd-toy-net", layer="other").requirements()[0].layer == "other"


def test_fd_with_a_model_id_keeps_its_case_and_reaches_the_factory(toy_net: Any) -> None:
    (name,) = resolve_metrics("fd-toy-net:Org/Model-X")
    assert name == "fd-toy-net:Org/Model-X"
    m = create_metric(name)
    assert m.extractor == "toy-net:Org/Model-X" and m.keys == ("fd_toy_net_org_model_x",)
    ext = m.build_extractors(None, True)["toy-net:Org/Model-X"]
    assert ext.model_id == "Org/Model-X"


def test_fd_of_an_unknown_extractor_is_an_unknown_metric() -> None:
    with pytest.raises(DifflensError, match="unknown metric"):
        resolve_metrics("fd-nonesuch")


def test_fd_inception_is_fid() -> None:
    """The generic class on Inception pool3 gives the FID metric's value (both rows routes and stats)."""
    for n_real, n_fake, dim in ((30, 25, 16), (300, 250, 16)):
        real, fake = _sets(n_real, n_fake, dim, seed=5)
        key = ("inception", "pool3")
        fd = _feed(create_metric("fd-inception"), key, real, fake, 9).compute()["fd_inception"].value
        fid = _feed(create_metric("fid"), key, real, fake, 9).compute()["fid"].value
        assert fd == pytest.approx(fid, rel=1e-12)


# --------------------------------------------------------------------------------- statistics sides


def test_a_side_from_statistics_equals_the_side_from_rows() -> None:
    real, fake = _sets(400, 300, 12, seed=7)
    key = ("clip:openai/clip-vit-base-patch32", "image_embeds")
    rows = _feed(create_metric("fd-clip"), key, real, fake).compute()["fd_clip"]
    r64 = real.astype(np.float64)
    for n in (400, None):  # count recorded, or a pytorch-fid file without it
        m = create_metric("fd-clip")
        stats = {"mu": r64.mean(0), "sigma": np.cov(r64, rowvar=False)} | ({"n": np.array(n)} if n else {})
        m.load_side_stats(True, stats, {"protocol": "x"})
        _feed(m, key, real[:0], fake)
        got = m.compute()["fd_clip"]
        assert got.value == pytest.approx(rows.value, rel=1e-10)
        assert got.counts["n_real"] == n
        assert m.state_dict()["real_fingerprint"] == '{"protocol": "x"}'


def test_statistics_without_the_keys_are_one_clear_error() -> None:
    m = create_metric("sfid")
    with pytest.raises(DifflensError, match="lack mu_s, sigma_s") as err:
        m.load_side_stats(True, {"mu": np.zeros(3), "sigma": np.eye(3)}, None)
    assert "mu_s and sigma_s" in (err.value.hint or "")


def test_sfid_reads_adm_spatial_statistics_and_matches_the_diagonal_formula() -> None:
    """Both sides as ADM statistics with diagonal covariances:
    FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(11)
    d = 2023
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 2.0, size=d), rng.uniform(0.1, 2.0, size=d)
    m = create_metric("sfid")
    m.load_side_stats(True, {"mu_s": mu1, "sigma_s": np.diag(a), "mu": np.zeros(5), "sigma": np.eye(5)}, None)
    m.load_side_stats(False, {"mu_s": mu2, "sigma_s": np.diag(b)}, None)
    want = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert m.compute()["sfid"].value == pytest.approx(want, rel=1e-10)


def test_sfid_on_rows_equals_the_formula() -> None:
    real, fake = _sets(200, 180, 40, seed=13)
    m = _feed(create_metric("sfid"), ("inception", "spatial"), real, fake, 16)
    assert m.requirements()[0].key == ("inception", "spatial")
    assert m.compute()["sfid"].value == pytest.approx(_scipy_fd(real, fake), rel=REL)


def test_fd_bootstrap_interval_from_the_context() -> None:
    from difflens.metrics.base import ComputeContext

    real, fake = _sets(300, 200, 8, seed=17)
    m = _feed(create_metric("fd-clip", bootstrap=20), ("clip:openai/clip-vit-base-patch32", "image_embeds"),
              real, fake)
    res = m.compute(ComputeContext(bootstrap=30, seed=1))["fd_clip"]
    lo, hi = res.fields["ci95"]
    assert lo < res.value < hi
    plain = _feed(create_metric("fd-clip"), ("clip:openai/clip-vit-base-patch32", "image_embeds"), real, fake)
    res = plain.compute(ComputeContext(bootstrap=30, seed=1))["fd_clip"]  # 200 > 4 x 8 rows: not kept
    assert "ci95" not in res.fields and any("no interval" in w for w in res.warnings)


# ------------------------------------------------------------------------- the Inception spatial layer


def test_spatial_features_flatten_in_tf_nhwc_order() -> None:
    """ADM: ``spatial[..., :7]`` of the NHWC tensor, reshaped per image: index (h * 17 + w) * 7 + c holds
    channel c at (h, w); torch's tensor is NCHW."""
    import torch

    from difflens.features.inception import spatial_features

    t = torch.arange(2 * 192 * 17 * 17, dtype=torch.float32).reshape(2, 192, 17, 17)
    out = spatial_features(t)
    assert out.shape == (2, 2023) and out.dtype == np.float32
    nhwc = t.numpy().transpose(0, 2, 3, 1)  # what the TF graph holds
    assert np.array_equal(out, nhwc[..., :7].reshape(2, -1))
    for b, h, w, c in ((0, 0, 0, 0), (1, 3, 16, 6), (0, 16, 2, 5)):
        assert out[b, (h * 17 + w) * 7 + c] == t[b, c, h, w]


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from difflens.features.inception import load_inception
    from difflens.features.inception_weights import make_random_inception_weights

    path = make_random_inception_weights(tmp_path_factory.mktemp("inc") / "w.pth", seed=0)
    return load_inception(weights=str(path), device="cpu", offline=True)


def test_inception_spatial_layer_is_mixed_6d_branch1x1(inception: Any) -> None:
    """The layer is the 1x1 branch of Mixed_6d on the Mixed_6c output, and pool3/logits are what the
    network gives without the hook (same kernels on the same inputs: bit for bit)."""
    import torch

    from difflens.features.inception import spatial_features, tf_resize

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    out = inception(images)
    assert set(out) == {"pool3", "logits", "spatial"} and out["spatial"].shape == (3, 2023)
    pool3, logits = inception.network(list(images))
    assert np.array_equal(out["pool3"], pool3) and np.array_equal(out["logits"], logits)
    m = inception.network.model
    with torch.inference_mode():
        x = tf_resize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float())
        x = (x - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c"):
            x = getattr(m, name)(x)
        want = spatial_features(m.Mixed_6d.branch1x1(x))
    np.testing.assert_allclose(out["spatial"], want, rtol=1e-5, atol=1e-6)
    assert np.all(out["spatial"] >= 0)  # after the ReLU
    assert not m.Mixed_6d.branch1x1._forward_hooks  # the hook lived for one call only
    assert "mixed_6/conv" in inception.fingerprint("spatial").feature_layer


def test_inception_spatial_layer_of_the_fast_implementation(inception: Any) -> None:
    """--inception-impl fast (folded batch-norm, channels-last) gives the same layer in the same order:
    within 1e-5 of the feature scale, the fast path's documented agreement for pool3."""
    from difflens.features.inception import load_inception

    fast = load_inception(weights=inception.weights, device="cpu", offline=True, impl="fast")
    images = np.random.default_rng(1).integers(0, 256, size=(2, 33, 35, 3), dtype=np.uint8)
    ref, got = inception(images)["spatial"], fast(images)["spatial"]
    assert got.shape == ref.shape == (2, 2023)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_gaussian_side_sums_about_a_shift_merge_and_keep_their_digits() -> None:
    """Shards with different shifts merge to one pass's statistics; a mean of 1e4 with unit spread keeps
    the covariance to 1e-9 (sum x x^T - n mu mu^T would lose ~8 digits there); a side loaded from
    statistics refuses rows."""
    from difflens.metrics.gaussian_side import GaussianSide

    rng = np.random.default_rng(23)
    x = rng.normal(size=(300, 6)) + 1e4
    whole, parts = GaussianSide(), [GaussianSide() for _ in range(3)]
    for s in range(0, 300, 7):
        whole.add(x[s:s + 7])
    for part, (a, b) in zip(parts, ((0, 1), (1, 170), (170, 300)), strict=True):
        for s in range(a, b, 11):
            part.add(x[s:min(s + 11, b)])
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    want = np.cov(x - x.mean(0), rowvar=False)
    for side in (whole, merged):
        st = side.stats
        assert st.n == 300 and np.allclose(st.mean, x.mean(0), rtol=1e-14, atol=0)
        np.testing.assert_allclose(st.covariance(), want, rtol=1e-9, atol=1e-9)
    loaded = GaussianSide()
    loaded.load_stats({"mu": np.zeros(6), "sigma": np.eye(6)}, ("mu", "sigma"), None, "test")
    with pytest.raises(DifflensError, match="given as statistics"):
        loaded.add(x[:3])


def test_run_options_reach_the_metrics_that_take_them() -> None:
    """evaluate() hands --inception-weights/--inception-impl/--seed/--bootstrap to the features-group
    metrics whose constructors take them (metric_options given by the user win)."""
    from difflens.metrics.frechet import with_run_options

    given = {"vendi": {"q": 2.0}, "sfid": {"seed": 9}}
    opts = with_run_options(("fd-clip", "sfid", "fid-inf", "vendi"), given, "w.pth", "fast", 5, 50)
    assert opts["fd-clip"] == {"seed": 5, "bootstrap": 50}  # CLIP: no Inception options
    assert opts["sfid"] == {"seed": 9, "inception_weights": "w.pth", "inception_impl": "fast",
                            "bootstrap": 50}
    assert opts["fid-inf"] == {"inception_weights": "w.pth", "inception_impl": "fast", "seed": 5}
    assert opts["vendi"] == {"q": 2.0, "inception_weights": "w.pth", "inception_impl": "fast"}
    for name, kw in opts.items():
        create_metric(name, **kw)  # every option is a constructor setting
    assert "bootstrap" not in with_run_options(("sfid",), None, None, None, 5, 0)["sfid"]


def test_fd_clip_preprocessing_is_clean_fids_up_to_uint8_rounding(tmp_path: Any) -> None:
    """clean-fid's CLIP-FID input (cleanfid/clip_features.py img_preprocess_clip and CLIP_fx: torchvision
    Resize(short side, BICUBIC) on the PIL image, CenterCrop, uint8, /255, OpenAI mean/std), restated here,
    against the pixel values of the ``clip`` extractor: at most one uint8 level apart, rarely."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from difflens.features.registry import get_extractor
    from difflens.tiny_encoders import save_tiny_clip

    ext = get_extractor(f"clip:{save_tiny_clip(tmp_path / 'clip')}", device="cpu", offline=True)
    enc = ext.encoder
    rng = np.random.default_rng(0)
    img = (np.cumsum(rng.normal(size=(90, 120, 3)), axis=1) * 3 + 128).clip(0, 255).astype(np.uint8)
    got = enc.pixel_values([img])[0]
    size = enc.image_size
    y = np.asarray(T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                              T.CenterCrop(size)])(Image.fromarray(img))).clip(0, 255).astype(np.uint8)
    ip = enc.processor.image_processor
    want = T.Normalize(ip.image_mean, ip.image_std)(torch.from_numpy(y).permute(2, 0, 1).float() / 255.0)
    level = 1.0 / 255.0 / min(ip.image_std)
    diff = (got - want).abs()
    assert diff.max().item() <= level * 1.001 and diff.mean().item() < 0.01 * level
