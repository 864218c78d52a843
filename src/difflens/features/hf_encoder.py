"""What the transformers-backed extractors (CLIP, DINOv2) share: the loaded model, where it runs, in which
dtype, and the digest of its weights that their fingerprints record."""

from __future__ import annotations

from typing import Any


class HFEncoder:
    """A transformers model in eval mode on ``device``, with its id and weights digest."""

    def __init__(self, model: Any, model_id: str, device: str, dtype: str, weights_digest: str) -> None:
        self.model = model
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.weights_digest = weights_digest

    @staticmethod
    def load_model(model_class: Any, model_id: str, device: str | None, dtype: str, offline: bool, what: str,
                   flag: str) -> tuple[Any, str, str]:
        """(model on its device in eval mode, the device, the weights digest) of a hub id or local folder
        (offline: never downloaded; a clear error naming ``flag`` when it cannot be read)."""
        from difflens.metrics.feature_cache import load_hf_model, weights_digest_for
        from difflens.models import resolve_device, resolve_dtype

        dev = resolve_device(device)
        model = load_hf_model(model_class, model_id, offline, what, flag, dtype=resolve_dtype(dtype))
        return model.to(dev).eval(), dev, weights_digest_for(str(model_id), offline)
