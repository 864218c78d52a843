"""Tiny random-weight text-to-image diffusers pipelines, built from configs in process (no download).

Each family mirrors the structure of the real model (pipeline class, component classes, scheduler
config, VAE scaling/shift, text-sequence layout) at toy size, so every difflens mode can be tested
offline on CPU in well under a second per generation. Weights are deterministic: ``torch.manual_seed
(seed)`` is called before each component is created.

All VAEs have ``block_out_channels=(32, 64)``: ``vae_scale_factor`` is 2 (a 64x64 image has a 32x32
latent).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.tiny.tokenizers import CLIP_MAX_LENGTH, T5_MAX_LENGTH, build_clip_tokenizer, build_t5_tokenizer

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

FAMILIES: tuple[str, ...] = ("sd15", "sdxl", "sd3", "flux", "pixart")

#: Pipeline class name each family builds (and that ``DiffusionPipeline.from_pretrained`` gives back).
PIPELINE_CLASSES: dict[str, str] = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "pixart": "PixArtSigmaPipeline",
}

#: VAE latent channels per family (the denoiser sees 4x this for flux, through 2x2 packing).
LATENT_CHANNELS: dict[str, int] = {"sd15": 4, "sdxl": 4, "sd3": 16, "flux": 4, "pixart": 4}
VAE_SCALE_FACTOR = 2

#: Suggested ``max_sequence_length`` call argument for the T5-based families (the pipelines' own
#: defaults, 256/512/300, work too but are slower).
MAX_SEQUENCE_LENGTH = T5_MAX_LENGTH

_CLIP_HIDDEN = 32
_T5_DIM = {"sd3": 64, "flux": 32, "pixart": 32}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny pipeline family {family!r}; valid families: {', '.join(FAMILIES)}")


def _clip_text(seed: int, vocab_size: int, with_projection: bool, eos_id: int, bos_id: int) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=_CLIP_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=_CLIP_HIDDEN,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _t5_encoder(seed: int, vocab_size: int, d_model: int) -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _vae(seed: int, latent_channels: int, scaling_factor: float, shift_factor: float | None,
         quant_conv: bool) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32, sample_size=64,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv, force_upcast=False,
    ).eval()


def _sd_scheduler_kwargs() -> dict[str, Any]:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1)


def _build_sd15(seed: int) -> Any:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = build_clip_tokenizer()
    te = _clip_text(seed, len(tok), False, tok.eos_token_id, tok.bos_token_id)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_CLIP_HIDDEN, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    vae = _vae(seed, 4, 0.18215, None, True)
    sched = PNDMScheduler(**_sd_scheduler_kwargs(), skip_prk_steps=True, set_alpha_to_one=False)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def _build_sdxl(seed: int) -> Any:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = build_clip_tokenizer(), build_clip_tokenizer()
    te = _clip_text(seed, len(tok), False, tok.eos_token_id, tok.bos_token_id)
    te2 = _clip_text(seed, len(tok2), True, tok2.eos_token_id, tok2.bos_token_id)
    time_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * _CLIP_HIDDEN, attention_head_dim=(2, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + _CLIP_HIDDEN,
        norm_num_groups=32,
    ).eval()
    vae = _vae(seed, 4, 0.13025, None, True)
    sched = EulerDiscreteScheduler(**_sd_scheduler_kwargs(), timestep_spacing="leading",
                                   interpolation_type="linear", prediction_type="epsilon")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=sched, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def _build_sd3(seed: int) -> Any:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = build_clip_tokenizer(), build_clip_tokenizer(), build_t5_tokenizer()
    te = _clip_text(seed, len(tok), True, tok.eos_token_id, tok.bos_token_id)
    te2 = _clip_text(seed, len(tok2), True, tok2.eos_token_id, tok2.bos_token_id)
    te3 = _t5_encoder(seed, len(tok3), _T5_DIM["sd3"])
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=LATENT_CHANNELS["sd3"], out_channels=LATENT_CHANNELS["sd3"],
        num_layers=2, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=_T5_DIM["sd3"],
        caption_projection_dim=32, pooled_projection_dim=2 * _CLIP_HIDDEN, pos_embed_max_size=96,
    ).eval()
    vae = _vae(seed, LATENT_CHANNELS["sd3"], 1.5305, 0.0609, False)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok,
        text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3,
    )


def _build_flux(seed: int) -> Any:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = build_clip_tokenizer(), build_t5_tokenizer()
    te = _clip_text(seed, len(tok), False, tok.eos_token_id, tok.bos_token_id)
    te2 = _t5_encoder(seed, len(tok2), _T5_DIM["flux"])
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS["flux"], num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_T5_DIM["flux"],
        pooled_projection_dim=_CLIP_HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ).eval()
    vae = _vae(seed, LATENT_CHANNELS["flux"], 0.3611, 0.1159, False)
    sched = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2,
                        tokenizer_2=tok2, transformer=transformer)


def _build_pixart(seed: int) -> Any:
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tok = build_t5_tokenizer()
    te = _t5_encoder(seed, len(tok), _T5_DIM["pixart"])
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=LATENT_CHANNELS["pixart"],
        out_channels=2 * LATENT_CHANNELS["pixart"], num_layers=2, num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32, caption_channels=_T5_DIM["pixart"], norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    ).eval()
    vae = _vae(seed, LATENT_CHANNELS["pixart"], 0.13025, None, True)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                        beta_schedule="linear", prediction_type="epsilon", solver_order=2,
                                        algorithm_type="dpmsolver++", lower_order_final=True)
    return PixArtSigmaPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer,
                               scheduler=sched)


_BUILDERS = {"sd15": _build_sd15, "sdxl": _build_sdxl, "sd3": _build_sd3, "flux": _build_flux,
             "pixart": _build_pixart}


def build_tiny_pipeline(family: str, seed: int = 0) -> DiffusionPipeline:
    """Build the tiny random-weight pipeline of ``family`` in memory (float32, CPU, eval mode)."""
    _check_family(family)
    pipe = _BUILDERS[family](seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` and save it (safetensors) to ``out_dir``, loadable with
    ``DiffusionPipeline.from_pretrained(out_dir)``. Returns ``out_dir`` as a Path."""
    _check_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(family, seed).save_pretrained(str(out), safe_serialization=True)
    return out
