"""Tiny offline pipelines: every family saves, loads back through DiffusionPipeline.from_pretrained,
generates finite images of the asked size, deterministically; the tiny tokenizers work."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from difflens.tiny import FAMILIES, PIPELINE_CLASSES

PROMPT = "a photo of a cat"


def _generate(pipe: Any, family: str, height: int, width: int, seed: int = 0) -> Any:
    import torch

    kwargs: dict[str, Any] = {}
    if family in ("sd3", "flux", "pixart"):
        kwargs["max_sequence_length"] = 32
    if family == "pixart":
        kwargs.update(use_resolution_binning=False, clean_caption=False)
    return pipe(PROMPT, height=height, width=width, num_inference_steps=2, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def loaded(tiny_pipeline_dir: Callable[[str], Path]) -> Callable[[str], Any]:
    from diffusers import DiffusionPipeline

    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            pipe = DiffusionPipeline.from_pretrained(str(tiny_pipeline_dir(family)))
            pipe.set_progress_bar_config(disable=True)
            cache[family] = pipe
        return cache[family]

    return get


def test_import_is_light() -> None:
    code = "import difflens.tiny, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_family() -> None:
    from difflens.tiny import build_tiny_pipeline, save_tiny_pipeline

    with pytest.raises(ValueError, match="sd15, sdxl, sd3, flux, pixart"):
        build_tiny_pipeline("sd2")
    with pytest.raises(ValueError, match="valid families"):
        save_tiny_pipeline("nope", "/nonexistent/never-created")


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_generate(family: str, loaded: Callable[[str], Any]) -> None:
    import numpy as np

    pipe = loaded(family)
    assert type(pipe).__name__ == PIPELINE_CLASSES[family]
    assert pipe.vae_scale_factor == 2
    image = _generate(pipe, family, 64, 64)
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0
    again = _generate(pipe, family, 64, 64)
    np.testing.assert_array_equal(image, again)  # bit for bit: the same call on the same pipeline object
    wide = _generate(pipe, family, 32, 64)
    assert wide.shape == (1, 32, 64, 3)
    assert np.isfinite(wide).all()


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_saved_matches_in_memory(family: str, loaded: Callable[[str], Any]) -> None:
    import numpy as np
    import torch

    from difflens.tiny import build_tiny_pipeline

    built = build_tiny_pipeline(family, seed=0)
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):  # the weights: bit for bit
        if getattr(built, name, None) is not None:
            mine, saved = getattr(built, name).state_dict(), getattr(loaded(family), name).state_dict()
            assert mine.keys() == saved.keys() and all(torch.equal(v, saved[k]) for k, v in mine.items())
    # The images: not bit for bit. Weights loaded from safetensors are memory-mapped at the file's offsets
    # (not 64-byte aligned), those built in memory are aligned, and the BLAS picks its kernel (summation
    # order) by alignment and CPU: up to 7.2e-7 apart on an AMD EPYC, equal elsewhere. The weights are
    # compared exactly above; what the images add is the saved configs (scheduler, tokenizers), whose loss
    # moves pixels by far more than 1e-5, which is 14x the float32 noise seen.
    np.testing.assert_allclose(_generate(built, family, 64, 64), _generate(loaded(family), family, 64, 64),
                               rtol=0, atol=1e-5)


def test_seed_changes_weights() -> None:
    import torch

    from difflens.tiny import build_tiny_pipeline

    a = build_tiny_pipeline("sd15", seed=0).unet.conv_in.weight
    b = build_tiny_pipeline("sd15", seed=1).unet.conv_in.weight
    c = build_tiny_pipeline("sd15", seed=0).unet.conv_in.weight
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_clip_tokenizer_words_offsets(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from difflens.tiny import WORDS, build_clip_tokenizer

    tok = build_clip_tokenizer()
    assert tok.model_max_length == 77
    enc = tok(PROMPT, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>"]
    assert enc.offset_mapping[1:-1] == [(0, 1), (2, 7), (8, 10), (11, 12), (13, 16)]
    for word in WORDS:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    text = "an astronaut riding a horse on the beach, sunset xyz"
    assert again(text).input_ids == tok(text).input_ids
    assert again.eos_token_id == tok.eos_token_id == len(tok) - 1


def test_t5_tokenizer_words_offsets(tmp_path: Path) -> None:
    from transformers import T5TokenizerFast

    from difflens.tiny import WORDS, build_t5_tokenizer

    tok = build_t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    enc = tok(PROMPT, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["\u2581a", "\u2581photo", "\u2581of", "\u2581a",
                                                        "\u2581cat", "</s>"]
    assert enc.offset_mapping[:-1] == [(0, 1), (2, 7), (8, 10), (11, 12), (13, 16)]
    for word in WORDS:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    tok.save_pretrained(tmp_path)
    again = T5TokenizerFast.from_pretrained(tmp_path)
    text = "A woman with a red flower, qzx!"
    padded = again(text, padding="max_length", max_length=32).input_ids
    assert padded == tok(text, padding="max_length", max_length=32).input_ids
    assert len(padded) == 32 and padded[-1] == 0
