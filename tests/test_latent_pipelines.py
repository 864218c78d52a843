"""Latent mode against the pipelines' own code paths (tiny random pipelines, 32 px, 2 steps)."""

from __future__ import annotations

import pytest
import torch

from difflens.latent import vae as lv
from difflens.latent.generation import (
    GenerationSettings,
    encode_text,
    generate,
    generate_from_prompt,
    initial_noise,
)

SIZE = 32
PROMPT = "a photo of a cat"


def _settings(family: str) -> GenerationSettings:
    t5 = family in ("sd3", "flux", "pixart")
    return GenerationSettings(size=SIZE, steps=2, max_sequence_length=32 if t5 else None)


def _load(tiny_pipeline_dir, family: str):
    from difflens.models import load_pipeline

    return load_pipeline(tiny_pipeline_dir(family), device="cpu")


def _pipeline_latents(pipe, family: str, seed: int = 5):
    """The pipeline's own final latents (output_type="latent") and its own decoded image
    (output_type="pt")."""
    kw = dict(height=SIZE, width=SIZE, num_inference_steps=2)
    if family in ("sd3", "flux", "pixart"):
        kw["max_sequence_length"] = 32
    if family == "pixart":
        kw.update(use_resolution_binning=False, clean_caption=False)
    with torch.no_grad():
        lat = pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="latent", **kw).images
        img = pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="pt", **kw).images
    return lat, img


@pytest.mark.parametrize("family", ["sd15", "sd3", "flux"])
def test_decode_matches_the_pipelines_own_decode(tiny_pipeline_dir, family: str) -> None:
    """SD-style (scale only), SD3 (scale + shift) and Flux (scale + shift + 2x2 packing): decoding the
    pipeline's final latents gives exactly the image the pipeline returns."""
    pipe = _load(tiny_pipeline_dir, family)
    lat, img = _pipeline_latents(pipe, family)
    if family == "flux":
        assert lat.dim() == 3  # packed tokens (B, h/2 * w/2, 4C)
    decoded = lv.decode_latents(pipe, lat, size=SIZE)
    # bit for bit: the same VAE on the same latents with the pipeline's own ops (scale, shift, unpack are
    # exact or the same float ops in the same order), in this process
    assert torch.equal(decoded, img.float())
    # forgetting the shift (or the scale) garbles the decode: the check above would catch it
    raw = lv.unpack_latents(pipe, lat, SIZE) if family == "flux" else lat
    wrong = pipe.vae.decode(raw / pipe.vae.config.scaling_factor).sample * 0.5 + 0.5
    if pipe.vae.config.shift_factor is not None:
        assert not torch.allclose(wrong.clamp(0, 1), img, atol=1e-3)
    wrong2 = (pipe.vae.decode(raw).sample * 0.5 + 0.5).clamp(0, 1)
    assert not torch.allclose(wrong2, img, atol=1e-3)


@pytest.mark.parametrize("family,scale,shift", [("sd15", 0.18215, None), ("flux", 0.3611, 0.1159)])
def test_encode_applies_shift_then_scale(tiny_pipeline_dir, family: str, scale: float, shift) -> None:
    pipe = _load(tiny_pipeline_dir, family)
    assert lv.vae_factors(pipe.vae)["scaling_factor"] == scale
    assert lv.vae_factors(pipe.vae)["shift_factor"] == shift
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    z = lv.encode_images(pipe, images, batch_size=2)
    with torch.no_grad():
        mode = pipe.vae.encode(images * 2 - 1).latent_dist.mode()
    expected = (mode - (shift or 0.0)) * scale
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)
    # the round trip decodes what the VAE itself decodes from the posterior mode
    rec = lv.decode_latents(pipe, z, size=SIZE)
    with torch.no_grad():
        direct = (pipe.vae.decode(mode).sample * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(rec, direct, rtol=1e-4, atol=1e-5)
    assert all(p > 0 for p in lv.psnr(images, rec))
    if family == "flux":
        packed = lv.pack_latents(pipe, z)
        assert tuple(packed.shape) == (3, (SIZE // 4) ** 2, 16)
        assert torch.equal(lv.unpack_latents(pipe, packed, SIZE), z)
        assert torch.equal(lv.decode_latents(pipe, packed, size=SIZE), rec)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux", "pixart"])
def test_generation_from_noise_and_embeddings_reproduces_the_pipeline(tiny_pipeline_dir, family: str) -> None:
    """The latent mode's path (explicit initial noise + prompt embeddings) gives the same image as
    pipe(prompt, generator=manual_seed(seed)) for every family."""
    pipe = _load(tiny_pipeline_dir, family)
    st = _settings(family)
    noise, g = initial_noise(pipe, 7, SIZE)
    mine = generate(pipe, encode_text(pipe, PROMPT, st), noise, g, st)
    ref = generate_from_prompt(pipe, PROMPT, 7, st)
    # bit for bit: both are one pipe(...) call of batch 1 on the same pipeline; the latent path only hands
    # in the noise and the prompt embeddings the pipeline would have made itself (same kernels, same inputs)
    assert torch.equal(mine, ref)
    other = generate(pipe, encode_text(pipe, PROMPT, st), initial_noise(pipe, 8, SIZE)[0], g, st)
    assert not torch.equal(other, ref)


def test_pixel_space_model_without_vae_is_refused(tmp_path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from difflens.errors import DifflensError

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(DifflensError, match="has no VAE"):
        lv.require_vae(pipe)
