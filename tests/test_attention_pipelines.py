"""Attention mode on tiny random SD 1.x, SDXL, SD3, Flux and PixArt pipelines (saved, loaded back with
``from_pretrained``): every invariant on square and non-square sizes, layer/word selection, conditional
branch, and restoration of the original processors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from difflens.attention.aggregate import OnlineAggregator
from difflens.attention.api import AttentionConfig, plan_attention, run_attention
from difflens.attention.capture import AttentionCapture
from difflens.models import load_pipeline

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "pixart")
T5 = ("sd3", "flux", "pixart")
PROMPT = "a photo of a cat and a dog"


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir: Callable[[str], Path]) -> Callable[[str], tuple[Any, Path]]:
    cache: dict[str, tuple[Any, Path]] = {}

    def get(family: str) -> tuple[Any, Path]:
        if family not in cache:
            path = tiny_pipeline_dir(family)
            cache[family] = (load_pipeline(path, "float32", "cpu", offline=True), path)
        return cache[family]

    return get


def _cfg(family: str, path: Path, **kw: Any) -> AttentionConfig:
    base: dict[str, Any] = dict(model=str(path), prompt=PROMPT, steps=2, seed=3, height=32, width=32,
                                max_sequence_length=32 if family in T5 else None, image_check=False)
    base.update(kw)
    return AttentionConfig(**base)


def _plain_image(pipe: Any, plan_kwargs: dict[str, Any], seed: int) -> np.ndarray:
    """The image plain diffusers makes with generator=torch.Generator("cpu").manual_seed(seed)."""
    with torch.no_grad():
        return pipe(**plan_kwargs, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


@pytest.mark.parametrize("size", [(32, 32), (32, 24)], ids=["square", "nonsquare"])
@pytest.mark.parametrize("family", FAMILIES)
def test_invariants(family: str, size: tuple[int, int], pipes: Callable[[str], tuple[Any, Path]]) -> None:
    pipe, path = pipes(family)
    h, w = size
    cfg = _cfg(family, path, height=h, width=w, all_tokens=True)
    result = run_attention(cfg, pipe)
    checks = {c["name"]: c for c in result.checks}
    names = ("probabilities_sum_to_one", "fast_route_matches_softmax", "output_reproduced", "token_ids_match",
             "map_shape_is_latent_grid")
    for name in names:
        assert checks[name]["ok"], checks[name]["message"]
    assert checks["output_reproduced"]["value"] < 1e-4
    if "step_alignment" in checks:
        assert checks["step_alignment"]["ok"]
    rec = result.record
    agg = result.aggregate
    latent = (h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
    n_tok = rec["text_sequence"]["length"]
    assert agg.maps.shape == (n_tok, *latent)
    assert agg.per_step.shape == (rec["steps_run"], n_tok, *latent)

    # Capture on == capture off, and --seed is plain diffusers' generator. Bit for bit on purpose: the
    # captured run's image comes from the original processors (the side computation only reads q and k),
    # so both runs are the same kernels on the same inputs in this process; any difference is a leak.
    plan = plan_attention(cfg, pipe)
    assert np.array_equal(_plain_image(pipe, plan.call_kwargs, cfg.seed), result.image)

    # Over all text positions a cross-attention map sums to 1 at every pixel; a joint one to the text mass.
    total = agg.maps.sum(0)
    if rec["family"] in ("sd", "sdxl", "pixart"):
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        assert agg.text_mass is None
    else:
        np.testing.assert_allclose(total, agg.text_mass, atol=1e-5)
        assert float(agg.text_mass.min()) > 0.0 and float(agg.text_mass.max()) < 1.0

    # Token alignment: the JSON's ids are the pipeline tokenizer's ids at those positions.
    seg = plan.prompt_tokens.segments[-1]
    tok = getattr(pipe, seg.tokenizer)
    text = rec["prompt_tokenized"]
    ids = tok(text, padding="max_length", max_length=seg.length, truncation=True).input_ids
    seg_tokens = [t for t in rec["tokens"] if t["segment"] == seg.name]
    assert [t["id"] for t in seg_tokens] == list(ids)
    cat = [t for t in seg_tokens if t["word"] == "cat"]
    assert len(cat) == 1
    assert tok.convert_ids_to_tokens([cat[0]["id"]])[0].strip("▁").replace("</w>", "") == "cat"
    if family == "pixart":   # masked padding gets no attention
        pads = [t["index"] for t in rec["tokens"] if t["kind"] == "pad"]
        assert float(agg.maps[pads].max()) < 1e-6


def test_words_repeated_kept_apart_and_selected(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    pipe, path = pipes("sd3")
    cfg = _cfg("sd3", path, prompt="a cat and a cat", words=("cat",), stride=2, steps=3)
    res = run_attention(cfg, pipe)
    labels = [w["label"] for w in res.record["words"]]
    assert labels == ["cat#1", "cat#2"]
    # each cat occurrence: one CLIP token and one T5 token, different positions per occurrence
    keys = [{res.record["tokens"][i]["key"] for i in w["tokens"]} for w in res.record["words"]]
    assert all(len(k) == 2 for k in keys) and not keys[0] & keys[1]
    assert res.aggregate.maps.shape[0] == 4
    assert res.aggregate.per_step_index == [0, 2]
    assert res.word_maps.shape == (2, 16, 16)
    assert set(res.record["entropy_per_step"]["words"]) == {"cat#1", "cat#2"}


def test_layer_selection_flux_single_blocks(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    pipe, path = pipes("flux")
    res = run_attention(_cfg("flux", path, layers="single*", height=16, width=32, breakdown=True), pipe)
    assert [la["name"] for la in res.record["layers"]] == ["single_transformer_blocks.0.attn"]
    n_tok = len(res.record["tokens"])
    assert res.aggregate.per_layer.shape == (1, n_tok, 8, 16)
    np.testing.assert_allclose(res.aggregate.per_layer[0], res.aggregate.maps, atol=1e-6)   # one layer
    heads = np.asarray(res.record["head_entropy"]["single_transformer_blocks.0.attn"])
    assert heads.shape == (2, n_tok) and np.all((heads > 0) & (heads <= 1))
    assert res.record["layers"][0]["kind"] == "single_text_first"
    assert res.record["layers"][0]["grid"] == [4, 8]
    assert all(c["ok"] for c in res.checks)


def test_conditional_branch_is_used(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    """With CFG the batch is [uncond, cond]; at step 0 the cond row sees exactly what a run without CFG
    sees, so the step-0 maps agree (the uncond row would not)."""
    pipe, path = pipes("sd15")
    with_cfg = run_attention(_cfg("sd15", path, guidance=7.5), pipe)
    without = run_attention(_cfg("sd15", path, guidance=1.0), pipe)
    assert with_cfg.record["normalization"]["batch_sizes_seen"][0] == 2
    assert without.record["normalization"]["batch_sizes_seen"][0] == 1
    np.testing.assert_allclose(with_cfg.aggregate.per_step[0], without.aggregate.per_step[0], atol=1e-5)
    assert not np.allclose(with_cfg.aggregate.per_step[-1], without.aggregate.per_step[-1], atol=1e-5)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_fused_projections_replayed(family: str, tiny_pipeline_dir: Callable[[str], Path]) -> None:
    path = tiny_pipeline_dir(family)
    pipe = load_pipeline(path, "float32", "cpu", offline=True)
    den = getattr(pipe, "unet", None) or pipe.transformer
    den.fuse_qkv_projections()
    res = run_attention(_cfg(family, path, height=32, width=32), pipe)
    checks = {c["name"]: c for c in res.checks}
    assert checks["output_reproduced"]["ok"], checks["output_reproduced"]["message"]
    if family == "sd15":
        assert {la["processor"] for la in res.record["layers"]} == {"FusedAttnProcessor2_0"}


def test_capture_restores_processors_even_on_error(pipes: Callable[[str], tuple[Any, Path]]) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe, path = pipes("sd15")
    den = pipe.unet
    before = {n: m.processor for n, m in den.named_modules() if hasattr(m, "set_processor")}
    call_before = AttnProcessor2_0.__call__
    plan = plan_attention(_cfg("sd15", path), pipe)
    agg = OnlineAggregator(len(plan.tokens), plan.latent_hw, 1, [la.name for la in plan.layers], False,
                           plan.groups)
    cap = AttentionCapture(pipe, den, plan.layers, [t.key for t in plan.tokens], plan.prompt_tokens.text_len,
                           plan.latent_hw, agg, encoders=("text_encoder",))

    def boom(*args: Any) -> dict[str, Any]:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"), cap:
        wrapped = [den.get_submodule(la.name).processor for la in plan.layers]
        assert all(type(p).__name__ == "CapturingAttnProcessor2_0" for p in wrapped)
        assert AttnProcessor2_0.__call__ is call_before   # no class patched
        with torch.no_grad():
            pipe(**plan.call_kwargs, generator=torch.Generator("cpu").manual_seed(0),
                 callback_on_step_end=boom)
    after = {n: m.processor for n, m in den.named_modules() if hasattr(m, "set_processor")}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert not den._forward_pre_hooks and not pipe.text_encoder._forward_pre_hooks
    assert cap.stats.captured_calls == len(plan.layers)   # one step ran, conditional call captured
