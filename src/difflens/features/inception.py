"""The FID Inception as an extractor: torch-fidelity's network under a resize protocol.

The network is torch-fidelity's :class:`FeatureExtractorInceptionV3` itself (its modules and weights
format, found by :mod:`difflens.features.inception_weights`), so features equal torch-fidelity's for the
same weights file. difflens runs the same layers in the same order (:func:`forward_normalized` mirrors its
``forward``) after a resize chosen by the protocol:

* ``tf-legacy`` (default; registry name ``inception``): torch-fidelity's TF1-exact bilinear resize of the
  uint8 pixels (as float) to 299x299, then ``(x - 128) / 128``: the protocol of TTUR, torch-fidelity and
  (up to its own resize) pytorch-fid. A batch of equal-size images is resized in one call, exactly as
  torch-fidelity does.
* ``clean`` (registry name ``inception-clean``): clean-fid's resize: each channel as a float32 PIL image,
  bicubic (antialiased) to 299x299, clipped to [0, 255], then ``(x - 128) / 128`` and the same network.

:class:`InceptionExtractor` returns ``(pool3, logits)``; :class:`Inception` is its
:class:`~difflens.features.base.Extractor` face (layers ``pool3`` (2048), ``logits`` (1008, unbiased) and
``spatial`` (2023, sFID's; see :func:`spatial_features`)).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from difflens.errors import DifflensError
from difflens.features.base import PROTOCOLS, ExtractorBase, Fingerprint
from difflens.features.inception_weights import WEIGHTS_FILENAME, InceptionWeights, _describe_weights
from difflens.numerics import strict_float32

INPUT_SIZE = 299
FEATURES = ("2048", "logits_unbiased")
LOGITS_LAYER = "logits_unbiased (1008)"
SPATIAL_CHANNELS = 7
SPATIAL_LAYER = "mixed_6/conv[..., :7] = Mixed_6d.branch1x1, NHWC-flattened (2023)"


def tf_resize(x: Any) -> Any:
    """torch-fidelity's TF1-exact bilinear resize of a float (B, 3, H, W) batch to 299x299 (its own function,
    so the values are the same bit for bit; at 299x299 it is the identity)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)


def clean_resize(image: Any) -> Any:
    """clean-fid's ``clean`` resize of one (H, W, 3) uint8 image: per channel, float32 PIL image, bicubic
    (antialiased) to 299x299, clipped to [0, 255]; returns (299, 299, 3) float32."""
    import numpy as np
    from PIL import Image

    size = (INPUT_SIZE, INPUT_SIZE)
    chans = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32)).resize(
        size, resample=Image.Resampling.BICUBIC)).clip(0, 255) for c in range(3)]
    return np.stack(chans, axis=2).astype(np.float32)


def forward_normalized(model: Any, x: Any) -> tuple[Any, Any]:
    """torch-fidelity's ``FeatureExtractorInceptionV3.forward`` from the normalized 299x299 input on:
    returns (pool3 (B, 2048), unbiased logits (B, 1008)), both float32."""
    import torch

    m = model
    x = m.Conv2d_1a_3x3(x)
    x = m.Conv2d_2a_3x3(x)
    x = m.Conv2d_2b_3x3(x)
    x = m.MaxPool_1(x)
    x = m.Conv2d_3b_1x1(x)
    x = m.Conv2d_4a_3x3(x)
    x = m.MaxPool_2(x)
    x = m.Mixed_5b(x)
    x = m.Mixed_5c(x)
    x = m.Mixed_5d(x)
    x = m.Mixed_6a(x)
    x = m.Mixed_6b(x)
    x = m.Mixed_6c(x)
    x = m.Mixed_6d(x)
    x = m.Mixed_6e(x)
    x = m.Mixed_7a(x)
    x = m.Mixed_7b(x)
    x = m.Mixed_7c(x)
    x = m.AvgPool(x)
    pool3 = torch.flatten(x, 1)
    logits = pool3.mm(m.fc.weight.T)
    return pool3.to(torch.float32), logits.to(torch.float32)


class InceptionExtractor:
    """pool3 features and unbiased logits of torch-fidelity's Inception, under a resize protocol."""

    def __init__(self, weights: InceptionWeights, device: str = "cpu", protocol: str = "tf-legacy") -> None:
        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if protocol not in PROTOCOLS:
            raise DifflensError(f"unknown --protocol {protocol!r}.", f"use one of {', '.join(PROTOCOLS)}")
        try:  # validate with the safe loader first: a file that needs arbitrary unpickling is refused
            state = torch.load(weights.path, map_location="cpu", weights_only=True)
        except Exception:  # torch raises many types (pickle, zip, runtime), with advice that is not ours
            raise DifflensError(f"--inception-weights {weights.path} is {_describe_weights(weights.path)}, "
                                "not a torch state dict of tensors.",
                                f"pass a torch-fidelity Inception state dict ({WEIGHTS_FILENAME})") from None
        if not isinstance(state, dict) or not state:
            raise DifflensError(f"--inception-weights {weights.path} is a torch file of "
                                f"{type(state).__name__}, not a state dict of tensors.",
                                f"pass a torch-fidelity Inception state dict ({WEIGHTS_FILENAME})")
        del state
        try:
            model = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                                feature_extractor_weights_path=str(weights.path))
        except RuntimeError as exc:
            raise DifflensError(f"Inception weights {weights.path} do not fit torch-fidelity's network: "
                                f"{str(exc).splitlines()[0]}.",
                                f"pass a torch-fidelity Inception state dict ({WEIGHTS_FILENAME})") from None
        self.model = model.to(device).eval()
        self.device = device
        self.protocol = protocol
        self.weights = weights
        self.fingerprint = Fingerprint(protocol=protocol, weights_sha256=weights.sha256)

    def with_protocol(self, protocol: str) -> InceptionExtractor:
        """The same network (shared, not reloaded) under another resize protocol."""
        import copy

        if protocol not in PROTOCOLS:
            raise DifflensError(f"unknown --protocol {protocol!r}.", f"use one of {', '.join(PROTOCOLS)}")
        other = copy.copy(self)
        other.protocol = protocol
        other.fingerprint = Fingerprint(protocol=protocol, weights_sha256=self.weights.sha256)
        return other

    def prepare(self, image: Any) -> Any:
        """Per-image CPU work done in loader threads: the clean resize; tf-legacy keeps the uint8 pixels."""
        return clean_resize(image) if self.protocol == "clean" else image

    def resize_tf(self, x: Any) -> Any:
        """The tf-legacy resize of a float (B, 3, H, W) batch to 299x299 (torch-fidelity's function)."""
        return tf_resize(x)

    def normalized_batch(self, images: list[Any]) -> Any:
        """The network input of a list of prepared images (HWC arrays): float32 (B, 3, 299, 299), resized
        under the protocol and normalized to (x - 128) / 128. Call under ``inference_mode``."""
        import numpy as np
        import torch

        if self.protocol == "clean":
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
            x = batch.to(self.device, non_blocking=True)
        else:
            parts = []
            for group in same_size_runs(images):
                # contiguous NCHW, as torch-fidelity's loader gives: the memory layout picks the conv
                # kernels, so it must match for bit-identical features
                u8 = torch.from_numpy(np.stack(group)).permute(0, 3, 1, 2).contiguous()
                xf = u8.to(self.device, non_blocking=True).to(torch.float32)
                parts.append(self.resize_tf(xf))
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
        return (x - 128) / 128

    def __call__(self, images: list[Any]) -> tuple[Any, Any]:
        """Features of a list of prepared images (HWC arrays) -> (pool3, logits) float32 numpy arrays."""
        import torch

        with torch.inference_mode(), strict_float32():
            pool3, logits = forward_normalized(self.model, self.normalized_batch(images))
            return pool3.cpu().numpy(), logits.cpu().numpy()


def same_size_runs(images: list[Any]) -> Iterator[list[Any]]:
    """Consecutive runs of images with the same shape (order kept)."""
    run: list[Any] = []
    for img in images:
        if run and img.shape != run[0].shape:
            yield run
            run = []
        run.append(img)
    if run:
        yield run


def spatial_features(branch1x1: Any) -> Any:
    """sFID's features (Nash et al. 2021, as the ADM evaluator computes them) from the output of
    ``Mixed_6d.branch1x1`` ((B, 192, 17, 17), NCHW): the first 7 channels, flattened in TF's NHWC order,
    ``(h * 17 + w) * 7 + c`` -> (B, 2023) float32 numpy.

    Which layer: guided-diffusion's evaluations/evaluator.py reads the TF tensor ``mixed_6/conv:0``
    (``FID_SPATIAL_NAME``) and keeps ``spatial[..., :7]`` (``_create_feature_graph``). In the TF Inception
    graph (classify_image_graph_def.pb) ``mixed_6`` is the third 17x17 block after the reduction
    ``mixed_3``, and ``mixed_6/conv`` its 1x1 branch, the ReLU after ``mixed_6/conv/conv2d_params`` and
    ``mixed_6/conv/batchnorm``; torch-fidelity's weight conversion maps exactly those to
    ``Mixed_6d.branch1x1.conv`` / ``.bn`` (toshas/torch-fidelity utils/util_convert_inception_weights.py,
    lines 137-138), and its ``BasicConv2d`` is conv -> batch-norm -> ReLU, so the module's output is that
    tensor (in NCHW: channel c at [:, c], hence the permute before flattening)."""
    x = branch1x1[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1).float().cpu().numpy()


class Inception(ExtractorBase):
    """The :class:`~difflens.features.base.Extractor` over an :class:`InceptionExtractor` (or its fast
    variant): layers ``pool3``, ``logits`` and ``spatial`` (read by a forward hook on ``Mixed_6d.branch1x1``
    held for the one call, so the network and its pool3/logits are untouched); the per-image resize of
    ``clean`` runs in reader threads."""

    layers = ("pool3", "logits", "spatial")

    def __init__(self, network: InceptionExtractor) -> None:
        self.network = network
        self.device = network.device
        self.name = "inception" if network.protocol == "tf-legacy" else f"inception-{network.protocol}"
        self.needs_prepare = network.protocol == "clean"

    @property
    def weights(self) -> InceptionWeights:
        return self.network.weights

    @property
    def protocol(self) -> str:
        return self.network.protocol

    def preprocessing(self) -> dict[str, Any]:
        from difflens.features.base import PROTOCOL_TEXT

        return {"protocol": self.protocol, "text": PROTOCOL_TEXT[self.protocol]}

    def fingerprint(self, layer: str = "pool3") -> Fingerprint:
        self.check_layer(layer)
        fp = self.network.fingerprint
        if layer in ("logits", "spatial"):
            from dataclasses import replace

            return replace(fp, feature_layer=LOGITS_LAYER if layer == "logits" else SPATIAL_LAYER)
        return fp

    def prepare(self, image: Any) -> Any:
        return self.network.prepare(image)

    def forward(self, prepared: Sequence[Any]) -> dict[str, Any]:
        captured: dict[str, Any] = {}
        branch = getattr(getattr(getattr(self.network, "model", None), "Mixed_6d", None), "branch1x1", None)
        handle = None if branch is None else branch.register_forward_hook(
            lambda _module, _inputs, output: captured.__setitem__("spatial", spatial_features(output)))
        try:
            pool3, logits = self.network(list(prepared))
        finally:
            if handle is not None:
                handle.remove()
        return {"pool3": pool3, "logits": logits, **captured}


def load_inception(protocol: str = "tf-legacy", weights: Any = None, device: str | None = None,
                   offline: bool = False, impl: str | None = None) -> Inception:
    """Registry factory: resolve the weights (:func:`resolve_inception_weights`), build the network
    (``impl``: ``reference`` = torch-fidelity's module as is; ``fast`` when :mod:`difflens.metrics.
    inception_fast` exists) and wrap it. ``weights`` may be an :class:`InceptionWeights` already resolved."""
    from difflens.allocator import release_freed_heap
    from difflens.features.inception_weights import resolve_inception_weights
    from difflens.models import resolve_device

    if protocol not in PROTOCOLS:
        raise DifflensError(f"unknown --protocol {protocol!r}.", f"use one of {', '.join(PROTOCOLS)}")
    resolved = weights if isinstance(weights, InceptionWeights) else resolve_inception_weights(weights,
                                                                                               offline)
    dev = resolve_device(device)
    if impl is None or impl == "reference":
        ext = Inception(InceptionExtractor(resolved, device=dev, protocol=protocol))
        release_freed_heap()
        return ext
    try:
        from difflens.metrics.inception_fast import make_inception_extractor  # type: ignore[import-not-found]
    except ImportError:
        raise DifflensError(f"Inception implementation {impl!r} is not available in this version.",
                            "use impl='reference'") from None
    ext = Inception(make_inception_extractor(resolved, device=dev, protocol=protocol, impl=impl))
    release_freed_heap()
    return ext
