"""ImageReward's network (Xu et al. 2023, THUDM/ImageReward, pip ``image-reward`` 1.5) in plain torch, with
the parameter names of the published ``ImageReward.pt`` so that file loads strictly.

reward = MLP(BERT_xattn(prompt tokens, ViT(image))[CLS]),
score = (reward - 0.16717362830052426) / 1.0333394966054072

* ``blip.visual_encoder``: BLIP's timm-style ViT (``create_vit('large', 224)``: ViT-L/16, width 1024, 24
  blocks, 16 heads, pre-norm blocks with LayerNorm eps 1e-6, qkv with bias, exact GELU); the output is
  every token after the final norm, ``(N, 1 + 196, 1024)``.
* ``blip.text_encoder``: BLIP's ``med.py`` BERT (the published ``med_config.json``: 12 layers, width 768,
  12 heads, FFN 3072, LayerNorm eps 1e-12, vocabulary 30524 = bert-base-uncased + ``[DEC]`` + ``[ENC]``):
  word + absolute position embeddings (no token-type embeddings), then per layer self-attention (padding
  masked by adding ``(1 - mask) * -10000``), cross-attention whose keys and values project the image
  tokens (``encoder_width`` = the ViT width; every image token attended), and the FFN, each with a
  residual and post-LayerNorm.
* ``mlp.layers``: Linear 768-1024-128-64-16-1 with NO activations (the dropouts at indices 1, 3, 5 are
  identity at inference), as published.
* ``blip.vision_proj`` / ``blip.text_proj``: BLIP's contrastive projections; in the checkpoint, unused by
  the score, loaded so that the file's layout is checked whole.

Why a port and not transformers' modules: the checkpoint's layout matches neither ``BertModel`` (it has no
``token_type_embeddings``, and its cross-attention keys/values take the 1024-d image width, where
transformers' BERT projects from ``hidden_size``) nor ``BlipVisionModel`` (other parameter names, and a
class token/position layout of its own); reusing them would need a renaming map plus zeroed extra
weights. The port is about 150 lines and names every tensor as the checkpoint does. Attention uses
``scaled_dot_product_attention`` with the same scale (1/sqrt(head dim)) and additive mask; the agreement
with the reference code is measured in ``tests/test_metric_imagereward.py``.

This module imports torch at module level (it defines ``nn.Module``s): it is imported only by
:func:`difflens.features.imagereward.load_imagereward`, never at ``import difflens``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflens.errors import DifflensError
from difflens.features.imagereward import REWARD_MEAN, REWARD_STD

#: ImageReward.py ``MLP``: the hidden widths of the reward head (input = the text width).
MLP_WIDTHS = (1024, 128, 64, 16, 1)
#: ``blip.text_encoder.embeddings.position_ids``: a buffer in the published file (``arange``), optional.
POSITION_IDS = "blip.text_encoder.embeddings.position_ids"

#: med_config.json keys that do not change the inference numbers (or that BLIP_Pretrain overrides:
#: ``encoder_width`` is set to the ViT width).
_IGNORED_KEYS = {"architectures", "model_type", "type_vocab_size", "initializer_range", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "encoder_width", "add_cross_attention",
                 "transformers_version", "position_embedding_type", "torch_dtype", "use_cache",
                 "chunk_size_feed_forward"}


@dataclass(frozen=True)
class ImageRewardConfig:
    """The architecture: the text fields are med_config.json's (published values by default); the vision
    fields (a difflens addition, for smaller test networks) default to BLIP's ``create_vit('large', 224)``."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_ratio: float = 4.0
    embed_dim: int = 256  # BLIP_Pretrain(embed_dim=256): vision_proj / text_proj

    def is_published(self) -> bool:
        return self == ImageRewardConfig()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config(spec: ImageRewardConfig | dict[str, Any] | str | Path | None) -> ImageRewardConfig:
    """The architecture from None (published), a dict, or a med_config.json-style JSON file (plus the
    optional vision keys of :class:`ImageRewardConfig`). Unknown keys, a non-"gelu" activation, relative
    positions or ``add_cross_attention: false`` are one DifflensError each."""
    if spec is None or isinstance(spec, ImageRewardConfig):
        return spec or ImageRewardConfig()
    where = "the ImageReward config"
    if isinstance(spec, (str, Path)):
        path = Path(spec).expanduser()
        where = f"ImageReward config {path}"
        if not path.is_file():
            raise DifflensError(f"{where} does not exist.",
                                "pass a med_config.json file, or leave --imagereward-config out for the "
                                "published architecture")
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DifflensError(f"{where} is not readable JSON ({exc}).",
                                "pass a med_config.json file") from None
    if not isinstance(spec, dict):
        raise DifflensError(f"{where} is not a JSON object.", "pass a med_config.json file")
    known = {f.name: f.type for f in fields(ImageRewardConfig)}
    unknown = sorted(k for k in spec if k not in known and k not in _IGNORED_KEYS)
    if unknown:
        raise DifflensError(f"{where} has unknown key(s) {', '.join(unknown)}.",
                            f"use med_config.json keys or {', '.join(known)}")
    if spec.get("add_cross_attention", True) is not True:
        raise DifflensError(f"{where} sets add_cross_attention to false; ImageReward's text encoder "
                            "attends to the image.", "use ImageReward's med_config.json")
    kinds = (spec.get("position_embedding_type", "absolute"), spec.get("hidden_act", "gelu"))
    if kinds != ("absolute", "gelu"):
        raise DifflensError(f"{where} asks for a position embedding or activation ImageReward does not use.",
                            "use position_embedding_type 'absolute' and hidden_act 'gelu' (med_config.json)")
    values: dict[str, Any] = {}
    for key, typ in known.items():
        if key in spec:
            cast = float if typ in ("float", float) else (str if typ in ("str", str) else int)
            try:
                values[key] = cast(spec[key])
            except (TypeError, ValueError):
                raise DifflensError(f"{where}: {key} = {spec[key]!r} is not a {cast.__name__}.",
                                    "fix the value in the config file") from None
    cfg = ImageRewardConfig(**values)
    for width, heads, what in ((cfg.hidden_size, cfg.num_attention_heads, "hidden_size"),
                               (cfg.vision_width, cfg.vision_heads, "vision_width")):
        if heads < 1 or width % heads:
            raise DifflensError(f"{where}: {what} {width} is not a multiple of its {heads} heads.",
                                "fix the head count in the config file")
    if cfg.image_size % cfg.patch_size:
        raise DifflensError(f"{where}: image_size {cfg.image_size} is not a multiple of patch_size "
                            f"{cfg.patch_size}.", "fix image_size or patch_size")
    return cfg


# --------------------------------------------------------------------------------------------- vision


class _VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _VisionMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _VisionAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _VisionMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class VisionTransformer(nn.Module):
    """BLIP's ViT (models/BLIP/vit.py): class token, learned positions, pre-norm blocks, final norm."""

    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        dim, grid = cfg.vision_width, cfg.image_size // cfg.patch_size
        self.patch_embed = _PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(_VisionBlock(dim, cfg.vision_heads, cfg.vision_mlp_ratio)
                                    for _ in range(cfg.vision_layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, :x.shape[1], :]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------- text


class _SelfAttention(nn.Module):  # med.py BertSelfAttention (keys/values from ``kv_width``)
    def __init__(self, width: int, kv_width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._split(self.query(x)), self._split(self.key(kv)),
                                             self._split(self.value(kv)), attn_mask=mask)
        return out.transpose(1, 2).reshape(x.shape)


class _Output(nn.Module):  # med.py BertSelfOutput / BertOutput: dense, residual, post-LayerNorm
    def __init__(self, d_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: ImageRewardConfig, kv_width: int) -> None:
        super().__init__()
        self.add_module("self", _SelfAttention(cfg.hidden_size, kv_width, cfg.num_attention_heads))
        self.output = _Output(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, kv, mask), x)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _TextLayer(nn.Module):  # med.py BertLayer, mode='multimodal'
    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg, cfg.hidden_size)
        self.crossattention = _Attention(cfg, cfg.vision_width)
        self.intermediate = _Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output = _Output(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, mask)
        x = self.crossattention(x, image, None)  # every image token attended: the inverted mask is 0
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Embeddings(nn.Module):
    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos))


class _Encoder(nn.Module):
    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_TextLayer(cfg) for _ in range(cfg.num_hidden_layers))


class TextEncoder(nn.Module):
    """med.py ``BertModel(add_pooling_layer=False)`` run with ``encoder_hidden_states`` = image tokens."""

    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        # med.py get_extended_attention_mask: (1 - mask) * -10000 added to the scores (in the model dtype)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask, image)
        return x


# ---------------------------------------------------------------------------------------------- model


class _Blip(nn.Module):
    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.hidden_size, cfg.embed_dim)


class _RewardMlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        dims = (width, *MLP_WIDTHS)
        linears = [nn.Linear(a, b) for a, b in itertools.pairwise(dims)]
        # ImageReward.py MLP: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
        self.layers = nn.Sequential(linears[0], nn.Dropout(0.2), linears[1], nn.Dropout(0.2), linears[2],
                                    nn.Dropout(0.1), linears[3], linears[4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardNet(nn.Module):
    """The whole model; :meth:`score` is ImageReward.score for a batch (one prompt per image)."""

    def __init__(self, cfg: ImageRewardConfig) -> None:
        super().__init__()
        self.config = cfg
        self.blip = _Blip(cfg)
        self.mlp = _RewardMlp(cfg.hidden_size)

    def score(self, pixels: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N,) float32 z-scored rewards: pixels (N, 3, S, S) normalized, token ids and mask (N, 35)."""
        image = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(ids, attention_mask, image)
        with torch.autocast(pixels.device.type, enabled=False):  # the head in float32 (ImageReward: .float())
            reward = self.mlp(text[:, 0, :].float())[:, 0]
        return (reward - REWARD_MEAN) / REWARD_STD


def expected_shapes(cfg: ImageRewardConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the published layout for ``cfg`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = ImageRewardNet(cfg)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_state_dict(state: Any, cfg: ImageRewardConfig, where: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for :class:`ImageRewardNet` (``position_ids`` checked and dropped), or one
    DifflensError naming missing/unexpected keys or shape mismatches (a checkpoint of another size)."""
    hint = ("pass the published ImageReward.pt (THUDM/ImageReward), and --imagereward-config only for a "
            "network of another size")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise DifflensError(f"{where} is not a state dict of tensors (ImageReward.pt layout).", hint)
    state = dict(state)
    pos = state.pop(POSITION_IDS, None)
    if pos is not None and not torch.equal(pos.reshape(-1).long().cpu(), torch.arange(pos.numel())):
        raise DifflensError(f"{where}: {POSITION_IDS} is not 0, 1, 2, ...", hint)
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        parts = [f"{len(keys)} {what} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise DifflensError(f"{where} does not have the ImageReward layout: {'; '.join(parts)}.", hint)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {want[k]})" for k in want
             if tuple(state[k].shape) != want[k]]
    if wrong:
        config = "the published architecture" if cfg.is_published() else "the given --imagereward-config"
        raise DifflensError(f"{where} is a network of another size than {config}: {len(wrong)} tensor(s) "
                            f"differ, e.g. {', '.join(wrong[:2])}.", hint)
    return state


def build_model(cfg: ImageRewardConfig, state: dict[str, torch.Tensor], device: str) -> ImageRewardNet:
    """The network with the checkpoint's tensors in float32 on ``device`` (no random init: built on the
    meta device, the tensors assigned); half precision is autocast at run time."""
    with torch.device("meta"):
        net = ImageRewardNet(cfg)
    # float32 tensors are taken as loaded (memory-mapped: no second copy of the 1.8 GB of weights)
    net.load_state_dict({k: v if v.dtype == torch.float32 else v.float() for k, v in state.items()},
                        strict=True, assign=True)
    return net.to(device=device).eval()
