"""Attention mode, units: measures, online aggregation, grids, words, and the replay against diffusers'
own probability function (no pipeline)."""

from __future__ import annotations

import math

import pytest
import torch

from difflens.attention.aggregate import (
    MEASURE_BATCH,
    OnlineAggregator,
    estimate_bytes,
    kept_steps,
    resize_matrix,
)
from difflens.attention.layout import grid_for
from difflens.attention.measures import peak_concentration, spatial_entropy
from difflens.attention.replay import replay
from difflens.attention.words import aggregate_words, find_words
from difflens.errors import DifflensError


def test_entropy_and_peak_extremes() -> None:
    uniform = torch.ones(1, 8, 6)
    delta = torch.zeros(1, 8, 6)
    delta[0, 3, 2] = 5.0
    assert spatial_entropy(uniform).item() == pytest.approx(1.0, abs=1e-6)
    assert spatial_entropy(delta).item() == pytest.approx(0.0, abs=1e-6)
    k = math.ceil(0.05 * 48)
    assert peak_concentration(uniform).item() == pytest.approx(k / 48, abs=1e-6)
    assert spatial_entropy(uniform.double()).item() == pytest.approx(1.0, abs=1e-12)
    assert peak_concentration(delta).item() == pytest.approx(1.0)
    # half the pixels: entropy log(24)/log(48)
    half = torch.zeros(1, 8, 6)
    half[0, :4] = 1.0
    assert spatial_entropy(half).item() == pytest.approx(math.log(24) / math.log(48), abs=1e-6)


def test_grid_for_non_square_and_ceil_division() -> None:
    assert grid_for(32 * 24, (32, 24)) == (32, 24)
    assert grid_for(16 * 12, (32, 24)) == (16, 12)
    assert grid_for(8 * 6, (32, 24)) == (8, 6)
    # UNet downsampling of odd sizes rounds up
    assert grid_for(5 * 4, (9, 7)) == (5, 4)
    with pytest.raises(DifflensError):
        grid_for(7, (32, 24))


def _offline_mean(maps_by_step: list[list[torch.Tensor]], hw: tuple[int, int]) -> torch.Tensor:
    import torch.nn.functional as F

    steps = []
    for layer_maps in maps_by_step:
        up = [F.interpolate(m[None], size=hw, mode="bilinear", align_corners=False)[0] for m in layer_maps]
        steps.append(torch.stack(up).mean(0))
    return torch.stack(steps)


@pytest.mark.parametrize(("grid", "size"), [((16, 16), (32, 32)), ((5, 4), (9, 7)), ((8, 6), (6, 9)),
                                             ((7, 7), (7, 7))])
def test_resize_matrix_is_torch_bilinear(grid: tuple[int, int], size: tuple[int, int]) -> None:
    """M_h @ x @ M_w.T equals F.interpolate(bilinear, align_corners=False), up, down and odd sizes."""
    import torch.nn.functional as F

    x = torch.rand(3, 5, *grid, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    got = resize_matrix(grid[0], size[0]) @ x @ resize_matrix(grid[1], size[1]).t()
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("word_mode", ["mean", "max"])
def test_online_aggregation_equals_offline_and_keeps_strided_steps(word_mode: str) -> None:
    """Against F.interpolate and plain means, over more steps than one batch of closed steps (two full
    batches and 3 steps), with a stride that crosses the batches."""
    gen = torch.Generator().manual_seed(0)
    hw = (8, 6)
    grids = [(8, 6), (4, 3), (4, 3), (2, 2)]
    n_steps, T = 2 * MEASURE_BATCH + 3, 3
    data = [[torch.rand(T, *g, generator=gen) for g in grids] for _ in range(n_steps)]
    agg = OnlineAggregator(T, hw, stride=3, layer_names=[f"l{i}" for i in range(4)], joint=False,
                           word_groups=[[0, 2], [1]], word_mode=word_mode, breakdown=True)
    for s, layer_maps in enumerate(data):
        for li, m in enumerate(layer_maps):
            agg.add(s, li, m)
    res = agg.result()
    offline = _offline_mean(data, hw)
    assert torch.allclose(torch.from_numpy(res.maps), offline.mean(0), atol=1e-6)
    assert res.per_step_index == list(range(0, n_steps, 3)) == kept_steps(n_steps, 3)
    assert res.steps_seen == list(range(n_steps))
    assert torch.allclose(torch.from_numpy(res.per_step), offline[0::3], atol=1e-6)
    assert res.token_entropy.shape == (n_steps, T)
    assert torch.allclose(torch.from_numpy(res.token_entropy), spatial_entropy(offline), atol=1e-6)
    for s in (4, MEASURE_BATCH + 1, n_steps - 2):
        words = aggregate_words(offline[s], [[0, 2], [1]], word_mode)
        assert torch.allclose(torch.from_numpy(res.word_entropy[s]), spatial_entropy(words), atol=1e-6)
        assert torch.allclose(torch.from_numpy(res.word_peak[s]), peak_concentration(words), atol=1e-6)
    assert res.per_layer.shape == (4, T, *hw)


def test_aggregator_memory_does_not_grow_with_steps() -> None:
    """Only the strided per-step maps grow; with one kept step the stored bytes are the same for 5 or 60
    steps, and the estimate is an upper bound."""
    stored = []
    for n_steps in (5, 60):
        agg = OnlineAggregator(4, (16, 12), stride=1000, layer_names=["a", "b"], joint=True,
                               word_groups=[[0]])
        for s in range(n_steps):
            for li in range(2):
                agg.add(s, li, torch.rand(4, 8, 6), torch.rand(8, 6), torch.rand(4, 8, 6))
        held = agg.result().stored_bytes          # every step closed, step 0 kept
        stored.append(held)
        est = estimate_bytes(4, (16, 12), n_steps, 1000, joint=True)
        assert est["accumulators"] + est["per_step"] >= held
    assert stored[0] == stored[1]


def test_word_aggregation_mean_max() -> None:
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    mean = aggregate_words(maps, [[0, 1], [2]], "mean")
    mx = aggregate_words(maps, [[0, 1], [2]], "max")
    assert mean.shape == (2, 2, 2, 2)
    assert torch.equal(mean[:, 0], maps[:, :2].mean(1))
    assert torch.equal(mx[:, 0], maps[:, 1])
    assert torch.equal(mean[:, 1], maps[:, 2])
    with pytest.raises(DifflensError):
        aggregate_words(maps, [[0]], "median")


def test_find_words_keeps_repeats_apart() -> None:
    words = find_words("a cat, a dog's cat-tree")
    assert [w for w, _, _ in words] == ["a", "cat", "a", "dog's", "cat", "tree"]
    assert words[1][1:] == (2, 5) and words[4][1:] == (15, 18)


def test_replay_cross_matches_diffusers_attention_scores() -> None:
    """Probabilities from the replay equal diffusers' own ``Attention.get_attention_scores`` (the
    probability function of the non-SDPA processor), key mask included; P x V reproduces the output."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8,
                     processor=AttnProcessor2_0()).eval()
    hs = torch.randn(2, 10, 16)
    enc = torch.randn(2, 5, 12)
    bias = torch.zeros(2, 1, 5)
    bias[:, :, 4] = -10000.0                      # a masked (padding) key, as PixArt passes it
    with torch.no_grad():
        out = attn(hs, encoder_hidden_states=enc, attention_mask=bias)
        keys = torch.arange(5)
        res = replay("cross", "AttnProcessor2_0", attn, {"hidden_states": hs, "encoder_hidden_states": enc,
                                                         "attention_mask": bias}, out, slice(1, 2), keys,
                     check=True)
        q = attn.head_to_batch_dim(attn.to_q(hs[1:]))
        k = attn.head_to_batch_dim(attn.to_k(enc[1:]))
        mask = attn.prepare_attention_mask(bias[1:], 5, 1)
        ref = attn.get_attention_scores(q, k, mask)     # (heads, 10, 5)
    assert torch.allclose(res.token_probs, ref.mean(0), atol=1e-6)
    assert res.token_probs[:, 4].abs().max() < 1e-12
    assert res.sum_error < 1e-6
    assert res.out_error < 1e-5


def test_plot_rows_prefer_content_words() -> None:
    from difflens.attention.plots import MAX_WORDS, pick_rows

    labels = ["a#1", "photo", "of", "a#2", "cat", "on", "the", "red", "bench", "at", "night"]
    rows = pick_rows(labels)
    assert len(rows) == MAX_WORDS and rows == sorted(rows)
    shown = {labels[i] for i in rows}
    assert {"photo", "cat", "red", "bench", "night"} <= shown
    assert pick_rows(labels[:3]) == [0, 1, 2]
