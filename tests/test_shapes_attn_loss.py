"""The attention-supervision terms of the shapes trainer (difflens.shapes.attn_loss), on constructed
probabilities: each term's minimum sits where its docstring says, and captions dropped for classifier-free
guidance add nothing."""

from __future__ import annotations

import math

import pytest
import torch

from difflens.shapes.attn_loss import attention_loss

CELLS = 256


def _targets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two words: token 1 on cells 0-9 (fully covered), token 2 on cells 5-19 (half covered)."""
    cover = torch.zeros(1, 4, CELLS)
    cover[0, 0, :10] = 1.0
    cover[0, 1, 5:20] = 0.5
    return torch.tensor([[1, 2, -1, -1]]), cover


def _probs(spread: dict[int, slice], heads: int = 2, tokens: int = 6) -> torch.Tensor:
    """(1, heads, 256, tokens) with token t's attention spread evenly over the cells ``spread[t]``."""
    p = torch.full((1, heads, CELLS, tokens), 1e-9)
    for t, cells in spread.items():
        p[0, :, cells, t] = 1.0
    return p


def test_cover_is_zero_when_the_map_spreads_evenly_over_the_object() -> None:
    tokens, cover = _targets()
    p = _probs({1: slice(0, 10), 2: slice(5, 20)})
    loss = attention_loss([p], tokens, cover, torch.tensor([True]), "cover").item()
    assert loss == pytest.approx(0, abs=1e-6)


def test_cover_penalizes_a_peaked_map_that_mass_does_not() -> None:
    """A map on one cell inside the object (1e-9 elsewhere): "mass" counts only the cell's coverage (word 1:
    0, word 2 half covered: 0.5), "cover" is the KL divergence from the uniform coverage of n cells."""
    tokens, cover = _targets()
    peaked = _probs({1: slice(0, 1), 2: slice(5, 6)})
    keep = torch.tensor([True])
    assert attention_loss([peaked], tokens, cover, keep, "mass").item() == pytest.approx(0.25, abs=1e-6)

    def kl(n: int) -> float:
        z = 1 + (CELLS - 1) * 1e-9
        return math.log(1 / n) - (math.log(1 / z) + (n - 1) * math.log(1e-9 / z)) / n

    expected = 0.5 * (kl(10) + kl(15))
    assert expected > 15
    assert attention_loss([peaked], tokens, cover, keep, "cover").item() == pytest.approx(expected, rel=1e-4)


def test_mass_is_zero_for_any_map_inside_a_fully_covered_object() -> None:
    tokens, cover = _targets()
    cover[0, 1] = 0.0
    cover[0, 1, 5:20] = 1.0
    p = _probs({1: slice(2, 4), 2: slice(5, 20)})
    loss = attention_loss([p], tokens, cover, torch.tensor([True]), "mass").item()
    assert loss == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("kind", ["mass", "cover"])
def test_dropped_captions_add_nothing(kind: str) -> None:
    tokens, cover = _targets()
    p = torch.rand(1, 2, CELLS, 6)
    assert attention_loss([p], tokens, cover, torch.tensor([False]), kind).item() == 0.0
