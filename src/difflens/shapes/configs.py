"""Architectures of the shapes-world models (the shipped ones and those ``difflens.shapes.train`` makes).

* VAE: ``AutoencoderKL``, three levels (latent factor 4), 4 latent channels: 64x64x3 <-> 16x16x4.
* CLIP: ``CLIPModel`` with a 3-layer, 64-wide text tower over at most ``MAX_TOKENS`` tokens and a 3-layer
  ViT on 8x8 patches; projection 64. Tokenizer: the tiny byte-level BPE of :mod:`difflens.tiny.tokenizers`
  in which every caption word is one token.
* UNet: ``UNet2DConditionModel`` (SD 1.x layout) on 16x16x4 latents; cross-attention only at the 16x16
  level (the 8x8 level and the mid block have none), so every cross-attention map is 16x16; the caption,
  attention-pooled (``addition_embed_type="text"``), also enters every ResNet through the time embedding.
* MMDiT: ``SD3Transformer2DModel`` with ``patch_size=1`` (a 16x16 grid of image tokens), joint attention
  over [image, text]; the text is the SD3 pipeline's CLIP-L ⊕ CLIP-G features (here the shipped CLIP text
  tower twice, 64 + 64 = ``joint_attention_dim``) followed by the zero "T5" rows of ``text_encoder_3=None``.
"""

from __future__ import annotations

from typing import Any

MAX_TOKENS = 16
LATENT_CHANNELS = 4
LATENT_SIZE = 16
TEXT_WIDTH = 64

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
)

CLIP_TEXT: dict[str, Any] = dict(
    hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
)
CLIP_VISION: dict[str, Any] = dict(
    image_size=64, patch_size=8, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
    num_attention_heads=4,
)
PROJECTION_DIM = 64

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2D",
    block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=2, norm_num_groups=16,
    # the caption, attention-pooled, is added to the timestep embedding of every ResNet block: without it
    # the 8x8 level and the mid block never saw the text and one-object prompts drew two objects
    addition_embed_type="text", addition_embed_type_num_heads=4,
)

MMDIT_CONFIG: dict[str, Any] = dict(
    sample_size=LATENT_SIZE, patch_size=1, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
    num_layers=3, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=2 * TEXT_WIDTH,
    caption_projection_dim=64, pooled_projection_dim=2 * PROJECTION_DIM, pos_embed_max_size=LATENT_SIZE,
)

#: Scheduler configs (SD 1.x's scaled-linear VP schedule; SD3's flow matching without shift).
SD_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
)
FLOW_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=1.0)


def tokenizer_words() -> tuple[str, ...]:
    """Words that are single tokens: the tiny tokenizer's list plus the shapes vocabulary."""
    from difflens.shapes.world import VOCABULARY
    from difflens.tiny.tokenizers import WORDS

    return tuple(dict.fromkeys((*WORDS, *VOCABULARY)))


def build_tokenizer() -> Any:
    """The CLIP tokenizer of the shapes models (fast, BPE; ``model_max_length`` = MAX_TOKENS)."""
    from transformers import CLIPTokenizer

    from difflens.tiny.tokenizers import clip_vocab_and_merges

    vocab, merges = clip_vocab_and_merges(tokenizer_words())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_clip(tokenizer: Any) -> Any:
    """A freshly initialized ``CLIPModel`` sized for ``tokenizer``."""
    from transformers import CLIPConfig, CLIPModel

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cfg = CLIPConfig(text_config={**CLIP_TEXT, **ids}, vision_config=dict(CLIP_VISION),
                     projection_dim=PROJECTION_DIM)
    return CLIPModel(cfg)


def build_processor(tokenizer: Any) -> Any:
    """The ``CLIPProcessor`` of the shapes CLIP: 64x64 input, pixels mapped to [-1, 1] (mean = std = 0.5),
    exactly the normalization the training used (a 64x64 image passes the resize and crop unchanged)."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    size = CLIP_VISION["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                         crop_size={"height": size, "width": size},
                                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def t5_stub() -> tuple[Any, Any]:
    """A tiny ``T5EncoderModel`` whose output is exactly zero (its final RMS-norm weight is 0), with the
    tiny T5 tokenizer. SD3 without T5 feeds zero rows in T5's place; this stub gives the same zeros while
    keeping the folder loadable by a plain ``DiffusionPipeline.from_pretrained`` (which needs every
    component the SD3 pipeline names). Weights seeded independently of the training RNG."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from difflens.tiny.tokenizers import build_t5_tokenizer

    tok = build_t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=MMDIT_CONFIG["joint_attention_dim"], d_kv=16, d_ff=64,
                   num_layers=1, num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        model.encoder.final_layer_norm.weight.zero_()
    return model, tok
