"""Tiny random-weight CLIP and DINOv2 models in the standard transformers formats, built offline.

For tests and the offline demo: ``save_tiny_clip(dir)`` writes a folder that ``CLIPModel.from_pretrained``
and ``CLIPProcessor.from_pretrained`` load (model, image processor and tokenizer), exactly as a real
``openai/clip-vit-*`` folder; ``save_tiny_dinov2(dir)`` does the same for ``Dinov2Model``. The numbers
they give are meaningless; what they prove is that difflens computes exactly what transformers computes
with the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
DINOV2_PATCH_SIZE = 14


def build_clip_tokenizer() -> Any:
    """The tiny CLIP tokenizer of :mod:`difflens.tiny` (common English words are single tokens)."""
    try:
        from difflens.tiny import build_clip_tokenizer as build
    except ImportError:
        from difflens.tiny.tokenizers import build_clip_tokenizer as build
    return build()


def build_tiny_clip(seed: int = 0, image_size: int = CLIP_IMAGE_SIZE, projection_dim: int = 16
                    ) -> tuple[Any, Any]:
    """A tiny ``CLIPModel`` (2 layers, width 32) and its ``CLIPProcessor`` (crop ``image_size``)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = build_clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                projection_dim=projection_dim)
    vision = dict(image_size=image_size, patch_size=CLIP_PATCH_SIZE, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu",
                  projection_dim=projection_dim)
    # projection_dim also in the sub-configs, as in the real openai configs, so that
    # CLIPVisionModelWithProjection / CLIPTextModelWithProjection load the same folder
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def save_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = CLIP_IMAGE_SIZE) -> Path:
    """Build the tiny CLIP and save model + processor (safetensors) to ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_clip(seed, image_size)
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out


def build_tiny_dinov2(seed: int = 0, image_size: int = 224) -> Any:
    """A tiny ``Dinov2Model`` (2 layers, width 16, patch 14)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          patch_size=DINOV2_PATCH_SIZE, image_size=image_size)
    torch.manual_seed(seed)
    return Dinov2Model(config).eval()


def save_tiny_dinov2(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny DINOv2 and save it (safetensors) to ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_dinov2(seed).save_pretrained(str(out), safe_serialization=True)
    return out
