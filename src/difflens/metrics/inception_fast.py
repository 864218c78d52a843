"""A faster CPU path for the FID Inception: the same network and weights, arranged for oneDNN.

torch-fidelity's network runs each ``BasicConv2d`` as convolution -> batch-norm -> ReLU, in NCHW. The fast
path changes only how those numbers are computed, once at load:

* **batch-norm folded into the convolution** (inference batch-norm is affine): with
  ``s = gamma / sqrt(running_var + eps)``, ``W' = W * s`` (per output channel) and
  ``b' = beta - running_mean * s``, computed in float64 and rounded to float32 once. One memory pass per
  layer fewer (94 layers).
* **channels-last** (NHWC) weights and activations: oneDNN's native layout on CPU, no reorder per layer.
* **the TF1 bilinear resize as two matrix products** (tf-legacy protocol): out = R_h X R_w^T with R the
  (299 x n) interpolation weights of TensorFlow 1.x ``resize_bilinear`` (align_corners=False): row i holds
  1 - d at floor(i n / 299) and d at the next pixel (clamped), d the fractional part, as torch-fidelity's
  ``interpolate_bilinear_2d_like_tensorflow1x`` computes them; it gathers the four neighbours instead, which
  costs ~9 ms per image at batch 50 against ~0.3 ms here. Same weights, another summation order.
* **CPU micro-batches** of ``CPU_CHUNK`` images through resize and network, whatever the batch size asked:
  at batch 50 the activations (~50 MB per layer) fall out of cache and the memory-bound layers (resize,
  pooling, concatenation) slow down; measured end to end on 2 cores, batch 16 ran 12.2 img/s against 10.4
  at batch 50 (BENCHMARKS.md, issue 16).

clean-fid's bicubic resize, the normalization ``(x - 128) / 128``, the pooling, concatenations and the
unbiased logits are unchanged. The result is not
bit-identical to torch-fidelity (another summation order, W*s rounded once): the agreement is measured and
asserted (``tests/test_inception_fast.py``: pool3 within 1e-5 of the feature scale, measured 6e-7; FID, KID
and IS within 1e-5 relative, FID measured 1.1e-6), and the implementation used is recorded in every result
(``protocol.inception_impl``). It is an option (``--inception-impl fast``); the default, ``reference``
(:class:`~difflens.metrics.inception.InceptionExtractor`), stays torch-fidelity's own module, bit for bit.
"""

from __future__ import annotations

from typing import Any, Literal

from difflens.errors import DifflensError
from difflens.metrics.inception import INPUT_SIZE, InceptionExtractor, InceptionWeights

InceptionImpl = Literal["fast", "reference"]
IMPLS: tuple[str, ...] = ("fast", "reference")
#: The default stays ``reference``: the fast path's features agree to about 6e-7 of the feature scale, but
#: FID is a difference of large trace terms, and on a 20 vs 20 image test its relative change was 1.1e-6,
#: above the 1e-6 asked for; bit-identity with torch-fidelity is what the default promises.
DEFAULT_IMPL: InceptionImpl = "reference"
#: Images per forward pass of the fast path on CPU (see the module docstring).
CPU_CHUNK = 16


def resize_matrix(n_in: int, n_out: int = INPUT_SIZE) -> Any:
    """(n_out, n_in) float32 weights of TensorFlow 1.x's bilinear resize (align_corners=False) along one
    axis: position p_i = i * (n_in / n_out) in float32, lo = floor(p_i), hi = min(lo + 1, n_in - 1),
    d = p_i - lo; row i = (1 - d) at lo + d at hi (torch-fidelity's arithmetic for p, lo and d)."""
    import torch

    pos = torch.arange(n_out, dtype=torch.float32) * torch.tensor(n_in / n_out, dtype=torch.float32)
    lo = pos.long()
    hi = (lo + 1).clamp_max(n_in - 1)
    d = pos - lo.float()
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float32)
    m.index_put_((rows, lo), 1 - d, accumulate=True)
    m.index_put_((rows, hi), d, accumulate=True)
    return m


class MatmulResize:
    """The TF1 bilinear resize to 299x299 of float (B, C, H, W) batches as R_h X R_w^T; the matrices are
    built once per input size."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, str], tuple[Any, Any]] = {}

    def __call__(self, x: Any) -> Any:
        import torch

        h, w = int(x.shape[-2]), int(x.shape[-1])
        if (h, w) == (INPUT_SIZE, INPUT_SIZE):
            return x
        key = (h, w, str(x.device))
        mats = self._cache.get(key)
        if mats is None:
            rw_t = resize_matrix(w).t().contiguous()
            mats = self._cache[key] = (resize_matrix(h).to(x.device), rw_t.to(x.device))
        rh, rw_t = mats
        return torch.matmul(torch.matmul(rh, x), rw_t)


def fold_batchnorm(model: Any, copy: bool = True) -> Any:
    """torch-fidelity's Inception with every ``BasicConv2d``'s batch-norm folded into its convolution
    (float64 arithmetic, one rounding to float32), in channels-last memory format; on a copy unless
    ``copy=False`` (then ``model`` itself is changed and returned)."""
    import copy as copy_module

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    fused = (copy_module.deepcopy(model) if copy else model).eval()
    n = 0
    with torch.no_grad():
        for module in fused.modules():
            if not isinstance(module, BasicConv2d):
                continue
            conv, bn = module.conv, module.bn
            s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            new = torch.nn.utils.skip_init(   # no random init: every value is overwritten below
                torch.nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                device=conv.weight.device, dtype=conv.weight.dtype)
            new.weight.copy_((conv.weight.double() * s[:, None, None, None]).to(conv.weight.dtype))
            new.bias.copy_((bn.bias.double() - bn.running_mean.double() * s).to(conv.weight.dtype))
            module.conv = new
            module.bn = torch.nn.Identity()
            n += 1
    if n == 0:
        raise DifflensError("the Inception network has no conv + batch-norm blocks to fold (an unexpected "
                            "torch-fidelity version?).", "use --inception-impl reference")
    return fused.to(memory_format=torch.channels_last)


class FastInceptionExtractor(InceptionExtractor):
    """:class:`InceptionExtractor` with the folded, channels-last network (see the module docstring)."""

    impl: InceptionImpl = "fast"

    def __init__(self, weights: InceptionWeights, device: str = "cpu", protocol: str = "tf-legacy") -> None:
        super().__init__(weights, device=device, protocol=protocol)
        self.model = fold_batchnorm(self.model, copy=False)
        self._resize = MatmulResize()

    def resize_tf(self, x: Any) -> Any:
        return self._resize(x)

    def normalized_batch(self, images: list[Any]) -> Any:
        import torch

        return super().normalized_batch(images).contiguous(memory_format=torch.channels_last)

    def __call__(self, images: list[Any]) -> tuple[Any, Any]:
        """Features of a list of prepared images (HWC arrays) -> (pool3, logits) float32 numpy arrays; on CPU
        in micro-batches of ``CPU_CHUNK`` images."""
        import numpy as np

        step = CPU_CHUNK if str(self.device).startswith("cpu") else max(1, len(images))
        forward = super().__call__          # bound here: a comprehension has no zero-argument super()
        parts = [forward(images[i:i + step]) for i in range(0, len(images), step)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def make_inception_extractor(weights: InceptionWeights, device: str = "cpu", protocol: str = "tf-legacy",
                             impl: str = DEFAULT_IMPL) -> InceptionExtractor:
    """The Inception extractor of implementation ``impl``: ``fast`` (folded batch-norm, channels-last) or
    ``reference`` (torch-fidelity's module as is, bit-identical features)."""
    if impl not in IMPLS:
        raise DifflensError(f"unknown --inception-impl {impl!r}.", f"use one of {', '.join(IMPLS)}")
    if impl == "fast":
        return FastInceptionExtractor(weights, device=device, protocol=protocol)
    ext = InceptionExtractor(weights, device=device, protocol=protocol)
    ext.impl = "reference"  # type: ignore[attr-defined]
    return ext
