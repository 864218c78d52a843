"""ImageReward (Xu et al. 2023) as a prompted extractor: one z-scored reward per (image, prompt), layer
``score`` ``(N, 1)``, the number ``ImageReward.score(prompt, image)`` returns (pip ``image-reward`` 1.5).

* Image: ImageReward.py ``_transform(224)``: PIL bicubic resize of the shorter side to 224 (the longer side
  ``int(224 * long / short)``, torchvision's rule), centre crop 224 (offsets ``round((size - 224) / 2)``),
  ``/255``, OpenAI CLIP mean/std. Run per image in the loader threads (:meth:`ImageRewardExtractor.prepare`).
* Prompt: bert-base-uncased's WordPiece tokenizer plus BLIP's ``[DEC]`` (bos) and ``[ENC]`` special tokens
  (BLIP ``init_tokenizer``), padded/truncated to 35 tokens.
* Network and checkpoint: :mod:`difflens.features.imagereward_model` (the published ``ImageReward.pt``
  loaded strictly: a missing or unexpected key, or a tensor of another shape, is one DifflensError).

Weights: ``--imagereward-checkpoint FILE`` (the published ``ImageReward.pt``), or, by default, the file
``ImageReward.pt`` of the hub repository ``THUDM/ImageReward`` (hub cache only with ``--offline``). The
fingerprint records the file's SHA-256, the tokenizer's vocabulary digest and the architecture.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.features.base import ExtractorBase, Fingerprint, canonical_preprocessing
from difflens.features.prompted import autocast, batch_prompts, check_dtype
from difflens.metrics.config import DEFAULT_IMAGEREWARD_REPO, DEFAULT_IMAGEREWARD_TOKENIZER

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_FILE = "ImageReward.pt"
NAME = "imagereward"
#: ImageReward.py: ``self.mean`` / ``self.std`` (the z-scoring of the reward, ImageReward v1.0).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: ImageReward.py: ``tokenizer(prompt, padding='max_length', truncation=True, max_length=35)``.
MAX_LENGTH = 35


def resize_center_crop(image: Any, size: int) -> Any:
    """ImageReward's ``Resize(size, BICUBIC)`` + ``CenterCrop(size)`` on a PIL image (torchvision's size
    and offset rules, PIL's bicubic filter)."""
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)  # Python round, as torchvision
    return image.crop((left, top, left + size, top + size))


def preprocess_image(image: Any, size: int) -> Any:
    """(3, size, size) float32 array: resize + centre crop, /255, CLIP mean/std."""
    import numpy as np

    from difflens.metrics.feature_cache import as_rgb_image

    arr = np.asarray(resize_center_crop(as_rgb_image(image), size), dtype=np.float32) / np.float32(255.0)
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))


def load_tokenizer(source: str, offline: bool, vocab_size: int) -> Any:
    """bert-base-uncased (or ``source``: a hub id or a tokenizer folder) with BLIP's ``[DEC]`` and ``[ENC]``
    added (BLIP ``init_tokenizer``); DifflensError when it cannot be loaded or outgrows the vocabulary."""
    from transformers import BertTokenizer

    from difflens.metrics.feature_cache import load_hf_model

    tok = load_hf_model(BertTokenizer, source, offline, "ImageReward tokenizer", "--imagereward-tokenizer")
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tok) > vocab_size:
        raise DifflensError(f"the ImageReward tokenizer {source!r} has {len(tok)} tokens, more than the "
                            f"network's vocabulary of {vocab_size}.",
                            "use bert-base-uncased (the published tokenizer) or a matching "
                            "--imagereward-config")
    return tok


def vocab_digest(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's vocabulary (token -> id, canonical JSON) and lower-casing flag."""
    lower = bool(getattr(tokenizer, "do_lower_case", True))
    blob = json.dumps({"vocab": tokenizer.get_vocab(), "lower": lower}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpoint_source(checkpoint: str | Path | None) -> Path | str:
    """The given ImageReward.pt as a Path, or a hub repository id whose ``ImageReward.pt`` is meant
    (``THUDM/ImageReward`` when None); a local path that does not exist is one DifflensError."""
    spec = str(checkpoint) if checkpoint is not None else DEFAULT_IMAGEREWARD_REPO
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    is_repo = checkpoint is None or (spec.count("/") == 1 and not spec.endswith((".pt", ".pth"))
                                     and not spec.startswith((".", "/", "~")) and not path.exists())
    if not is_repo:
        raise DifflensError(f"ImageReward checkpoint {spec} does not exist (or is not a file).",
                            "pass --imagereward-checkpoint with the path of ImageReward.pt "
                            "(THUDM/ImageReward)")
    return spec


def fetch_checkpoint(repo: str, offline: bool) -> Path:
    """``ImageReward.pt`` of hub repository ``repo`` (from the hub cache only when offline)."""
    from huggingface_hub import hf_hub_download

    from difflens.models import is_offline

    off = is_offline(offline)
    try:
        return Path(hf_hub_download(repo, CHECKPOINT_FILE, local_files_only=off))
    except Exception as exc:  # any hub/cache failure is the same user error
        where = "the local hub cache (offline mode)" if off else "the hub or its cache"
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DifflensError(f"could not get {CHECKPOINT_FILE} of {repo} from {where}: {first}",
                            "pass --imagereward-checkpoint FILE (ImageReward.pt from THUDM/ImageReward)"
                            ) from None


def read_checkpoint(path: Path) -> Any:
    """``torch.load`` of a state dict (tensors only, memory-mapped when the file allows)."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable: one user error, whatever torch raised
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DifflensError(f"ImageReward checkpoint {path} cannot be read as a torch state dict: {first}",
                            "pass ImageReward.pt from THUDM/ImageReward (a torch.save'd state dict)"
                            ) from None


class ImageRewardExtractor(ExtractorBase):
    """Prompted extractor: ``forward(prepared, prompts=[...])`` -> ``{"score": (N, 1) float32}``."""

    name = NAME
    layers = ("score",)
    prompted = True
    needs_prepare = True

    def __init__(self, net: Any, tokenizer: Any, *, device: str, dtype: str, weights_sha256: str,
                 checkpoint: str, tokenizer_source: str, tokenizer_sha256: str) -> None:
        self.net = net
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.weights_sha256 = weights_sha256
        self.checkpoint = checkpoint
        self.tokenizer_source = tokenizer_source
        self.tokenizer_sha256 = tokenizer_sha256
        self.image_size = net.config.image_size

    def prepare(self, image: Any) -> Any:
        return preprocess_image(image, self.image_size)

    def tokenize(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def forward(self, prepared: Sequence[Any], prompts: Sequence[str] | None = None) -> dict[str, Any]:
        import numpy as np
        import torch

        texts = batch_prompts("ImageReward", len(prepared), prompts)
        if not len(prepared):
            return {"score": np.zeros((0, 1), np.float32)}
        ids, mask = self.tokenize(texts)
        pixels = torch.from_numpy(np.stack([np.asarray(p, np.float32) for p in prepared])).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            scores = self.net.score(pixels, ids.to(self.device), mask.to(self.device))
        return {"score": scores.float().cpu().numpy().reshape(-1, 1)}

    def preprocessing(self) -> dict[str, Any]:
        s = self.image_size
        return {"resize": f"PIL bicubic, shorter side to {s} (torchvision Resize rule)",
                "crop": f"center {s}x{s}", "scale": "1/255", "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                "tokenizer_sha256": self.tokenizer_sha256,
                "text": f"padding max_length {MAX_LENGTH}, truncation; [DEC] and [ENC] added (BLIP)"}

    def fingerprint(self, layer: str = "score") -> Fingerprint:
        self.check_layer(layer)
        cfg = self.net.config
        arch = "published ViT-L/16 + BERT-base (med_config.json)" if cfg.is_published() else \
            json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
        return Fingerprint(protocol="imagereward-blip-224", weights_sha256=self.weights_sha256,
                           extractor=f"ImageReward v1.0 network ({arch})",
                           feature_layer=f"score: (reward - {REWARD_MEAN}) / {REWARD_STD}", dtype=self.dtype,
                           preprocessing=canonical_preprocessing(self.preprocessing()))


def load_imagereward(checkpoint: str | Path | None = None, tokenizer: str | None = None,
                     config: Any = None, device: str | None = None, dtype: str = "float32",
                     offline: bool = False) -> ImageRewardExtractor:
    """Registry factory: the architecture (``config``: None = published, a dict or a med_config.json),
    the tokenizer, then the checkpoint (SHA-256, strict layout check) and the network, in that order, so
    a wrong option fails before the 1.7 GB file is read."""
    from difflens.features.imagereward_model import build_model, check_state_dict, read_config
    from difflens.hashing import sha256_file
    from difflens.models import resolve_device

    check_dtype("imagereward", dtype)
    cfg = read_config(config)
    dev = resolve_device(device)
    source = tokenizer or DEFAULT_IMAGEREWARD_TOKENIZER
    where = checkpoint_source(checkpoint)  # a missing local file fails here, before anything is loaded
    tok = load_tokenizer(source, offline, cfg.vocab_size)
    path = where if isinstance(where, Path) else fetch_checkpoint(where, offline)
    state = check_state_dict(read_checkpoint(path), cfg, f"ImageReward checkpoint {path}")
    net = build_model(cfg, state, dev)
    return ImageRewardExtractor(net, tok, device=dev, dtype=dtype, weights_sha256=sha256_file(path),
                                checkpoint=str(path), tokenizer_source=source,
                                tokenizer_sha256=vocab_digest(tok))
