"""HPSv2 (Wu et al. 2023, "Human Preference Score v2"; github.com/tgxs002/HPSv2) as a prompted extractor.

The network is an open_clip CLIP (ViT-H-14 by default; ``--hpsv2-arch`` takes another open_clip
architecture name or a model-config JSON file) with the HPS checkpoint loaded **strictly** (every key,
every shape). The HPS versions differ only by checkpoint (HuggingFace ``xswu/HPSv2``, the names
``hpsv2.utils.hps_version_map`` uses): 2.1 (default, the current leaderboard) ``HPS_v2.1_compressed.pt``,
2.0 ``HPS_v2_compressed.pt``. Nothing is downloaded unless no ``--hpsv2-checkpoint`` is given, the
metric was named and difflens is online.

Preprocessing, as HPSv2's ``preprocess_val`` (``create_model_and_transforms(..., light_augmentation=True)``,
``open_clip/transform.py``: ``ToTensor``, ``ResizeMaxSize``, ``Normalize``): the uint8 image as float
``x / 255``; the longer side resized to the model's image size (224) with torchvision's tensor
``resize`` (bicubic, antialiased, sizes ``round(side * 224 / longer)``, no clamping), zero padding split
``pad // 2`` left/top and the rest right/bottom to a square; then ``(x - mean) / std`` with OpenAI CLIP's
mean/std. (HPSv2 skips the resize *and* the padding when the longer side is already 224; difflens still pads
such a non-square image to a square, which HPSv2's network would refuse. HPSv2 leaves the antialiasing to
torchvision's default, which is on since torchvision 0.17 (2024) and was off before; difflens sets it on,
as HPSv2 runs today, so scores made with an older torchvision differ slightly for downscaled images.)

Score: ``100 * cos(E_img, E_txt)`` of the L2-normalized image and text embeddings, the scale of HPSv2's
leaderboard (``evaluation.py``: ``image_features @ text_features.T * 100``; ``hpsv2.score`` returns the
bare cosine). The text is tokenized by open_clip's tokenizer for the architecture (77 tokens, truncated).

Layer ``score`` is ``(N, 1)`` float32. ``dtype`` float16/bfloat16 runs the forward pass under autocast
(HPSv2's own scoring uses float16 autocast on CUDA), float32 keeps full precision (the default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from difflens.errors import DifflensError
from difflens.features.base import ExtractorBase, Fingerprint, canonical_preprocessing
from difflens.features.prompted import autocast, batch_prompts, check_dtype
from difflens.metrics.config import DEFAULT_HPSV2_ARCH as DEFAULT_HPS_ARCH
from difflens.metrics.config import DEFAULT_HPSV2_VERSION, HpsVersion

HPS_VERSIONS: tuple[str, ...] = get_args(HpsVersion)
HPS_HUB_REPO = "xswu/HPSv2"
#: the checkpoint file of each version in :data:`HPS_HUB_REPO`
HPS_CHECKPOINTS: dict[str, str] = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SCALE = 100.0


def require_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise DifflensError("the hpsv2 metric needs open_clip (the open_clip_torch package).",
                            "pip install 'difflens[preference]' (or pip install open_clip_torch)") from None
    return open_clip


def arch_config(arch: str) -> tuple[dict[str, Any], str]:
    """(open_clip model config, a label) of an architecture name or a model-config JSON file."""
    import copy

    path = Path(arch).expanduser()
    if arch.lower().endswith(".json") or path.is_file():
        if not path.is_file():
            raise DifflensError(f"--hpsv2-arch: no model-config file {arch}.",
                                "pass an existing open_clip model-config JSON, or an architecture name")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DifflensError(f"--hpsv2-arch {arch} is not a readable JSON file ({exc}).",
                                "pass an open_clip model config (embed_dim, vision_cfg, text_cfg)") from None
        cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else cfg
        label = f"config {path.name}"
    else:
        open_clip = require_open_clip()
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise DifflensError(f"--hpsv2-arch: {arch!r} is not an open_clip architecture.",
                                f"use an open_clip model name (HPSv2: {DEFAULT_HPS_ARCH}) or a config JSON")
        cfg = copy.deepcopy(cfg)
        label = arch
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise DifflensError(f"--hpsv2-arch {arch}: not an open_clip CLIP config (needs embed_dim, vision_cfg "
                            "and text_cfg).", "pass an open_clip CLIP model config")
    if "multimodal_cfg" in cfg:
        raise DifflensError(f"--hpsv2-arch {arch}: a CoCa model, not a CLIP.", "use a CLIP architecture")
    return cfg, label


def resolve_checkpoint(checkpoint: str | None, version: str, offline: bool) -> Path:
    """The checkpoint file: ``checkpoint`` as given, else the version's file from the hub (online only)."""
    from difflens.models import is_offline

    if version not in HPS_VERSIONS:
        raise DifflensError(f"unknown --hpsv2-version {version!r}.", f"use one of {', '.join(HPS_VERSIONS)}")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise DifflensError(f"--hpsv2-checkpoint {checkpoint}: no such file.",
                                f"pass the HPS checkpoint (.pt), e.g. {HPS_CHECKPOINTS[version]}")
        return path
    name = HPS_CHECKPOINTS[version]
    if is_offline(offline):
        raise DifflensError(f"hpsv2 needs its checkpoint, and difflens is offline (no download of {name}).",
                            f"pass --hpsv2-checkpoint FILE (the {name} of {HPS_HUB_REPO})")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(HPS_HUB_REPO, name))
    except Exception as exc:  # network, auth, missing file: one line
        raise DifflensError(f"cannot download {name} from {HPS_HUB_REPO} ({type(exc).__name__}).",
                            "download it yourself and pass --hpsv2-checkpoint FILE") from None


def load_checkpoint_strict(model: Any, path: Path, arch: str) -> None:
    """Load ``path`` (a state dict, or ``{"state_dict": ...}`` as HPS ships it) into ``model``; a missing
    or unexpected key or a shape mismatch is one DifflensError."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DifflensError(f"cannot read the HPS checkpoint {path} ({type(exc).__name__}: {exc}).",
                            "pass a torch .pt file holding a state dict") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DifflensError(f"the HPS checkpoint {path} holds no state dict.",
                            "pass the .pt file HPSv2 ships (a dict with 'state_dict')")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                 for what, v in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes)) if v]
        raise DifflensError(f"the checkpoint {path.name} does not fit the open_clip architecture {arch}: "
                            f"{'; '.join(parts)}.",
                            f"pass the --hpsv2-arch it was trained with (HPSv2: {DEFAULT_HPS_ARCH})")
    model.load_state_dict(state, strict=True)


def build_clip(cfg: dict[str, Any]) -> Any:
    """An open_clip CLIP (or CustomTextCLIP) from a model config, randomly initialized, nothing downloaded."""
    import copy

    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(cfg)
    vision, text = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    hf_text = "hf_model_name" in text
    if hf_text:
        text["hf_model_pretrained"] = False
    custom = bool(cfg.pop("custom_text", False)) or hf_text
    return (CustomTextCLIP if custom else CLIP)(**cfg)


def tokenizer_for(cfg: dict[str, Any]) -> Any:
    """open_clip's tokenizer for a model config (SimpleTokenizer unless the config names a HF one)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text = cfg.get("text_cfg", {})
    length = int(text.get("context_length", 77))
    if text.get("hf_tokenizer_name"):
        return HFTokenizer(text["hf_tokenizer_name"], context_length=length)
    return SimpleTokenizer(context_length=length, **text.get("tokenizer_kwargs", {}))


def resize_max_pad(image: Any, size: int) -> Any:
    """HPSv2's ``ToTensor`` + ``ResizeMaxSize``: float ``x / 255`` (3, H, W), longer side -> ``size``
    (torchvision bicubic, antialiased), zero-padded to ``size`` x ``size`` (``pad // 2`` left/top)."""
    import numpy as np
    import torch
    import torchvision.transforms.functional as tvf
    from torchvision.transforms import InterpolationMode

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = (round(h * scale), round(w * scale))
        x = tvf.resize(x, list(new), InterpolationMode.BICUBIC, antialias=True)
        h, w = new
    pad_h, pad_w = size - h, size - w
    if pad_h or pad_w:
        x = tvf.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return x


class Hpsv2(ExtractorBase):
    """HPSv2 score of each image against its prompt: layer ``score`` = 100 * cos (see the module doc)."""

    prompted = True
    needs_prepare = True
    layers = ("score",)

    def __init__(self, model: Any, tokenizer: Any, *, arch: str, version: str, checkpoint_sha256: str,
                 device: str, dtype: str = "float32") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.arch, self.version, self.sha256 = arch, version, checkpoint_sha256
        self.device, self.dtype = device, dtype
        size = model.visual.image_size
        self.size = int(size if isinstance(size, int) else size[0])
        mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(model.visual, "image_std", None) or OPENAI_STD
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.name = "hpsv2"

    def preprocessing(self) -> dict[str, Any]:
        return {"to_float": "x / 255", "resize": "longer side to size, torchvision tensor bicubic, antialias",
                "pad": "zeros to size x size, pad // 2 left/top", "size": self.size,
                "mean": list(self.mean), "std": list(self.std),
                "context_length": self.tokenizer.context_length}

    def fingerprint(self, layer: str = "score") -> Fingerprint:
        self.check_layer(layer)
        return Fingerprint(protocol="hpsv2-resize-max-pad", weights_sha256=self.sha256,
                           extractor=f"HPSv{self.version} (open_clip {self.arch})",
                           feature_layer="score = 100 * cos(image, text) (HPSv2 leaderboard scale)",
                           dtype=self.dtype, preprocessing=canonical_preprocessing(self.preprocessing()))

    def prepare(self, image: Any) -> Any:
        return resize_max_pad(image, self.size)

    def forward(self, prepared: Sequence[Any], prompts: Sequence[str] | None = None) -> dict[str, Any]:
        import torch

        texts = batch_prompts("hpsv2", len(prepared), prompts)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        x = ((torch.stack(list(prepared)) - mean) / std).to(self.device)
        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            img = self.model.encode_image(x, normalize=True)
            txt = self.model.encode_text(tokens, normalize=True)
            cos = (img.float() * txt.float()).sum(dim=-1)
        return {"score": (SCALE * cos).cpu().numpy().astype("float32")[:, None]}


def load_hpsv2(checkpoint: str | None = None, arch: str = DEFAULT_HPS_ARCH,
               version: str = DEFAULT_HPSV2_VERSION, device: str | None = None, dtype: str = "float32",
               offline: bool = False) -> Hpsv2:
    """Build the HPSv2 extractor: checks (version, arch, checkpoint file or download) come first, then the
    network is built and the checkpoint loaded strictly; its SHA-256 goes into the fingerprint."""
    from difflens.hashing import sha256_file
    from difflens.models import resolve_device

    check_dtype("hpsv2", dtype)
    require_open_clip()
    cfg, label = arch_config(arch)
    path = resolve_checkpoint(checkpoint, version, offline)
    model = build_clip(cfg)
    load_checkpoint_strict(model, path, label)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    return Hpsv2(model, tokenizer_for(cfg), arch=label, version=version, checkpoint_sha256=sha256_file(path),
                 device=dev, dtype=dtype)
