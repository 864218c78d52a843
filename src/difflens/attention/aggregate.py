"""Online aggregation of attention maps, in memory that does not grow with the number of steps.

Each captured layer call brings, per kept token, a map on that layer's token grid (already averaged over
heads and over the conditional rows). Maps of other resolutions are resized (bilinear) to the latent grid.
Within a step, maps are averaged over the selected layers; the step map is then

* added to the running total (the final ``maps`` are the mean over all steps),
* kept as a per-step map when ``step % stride == 0``,
* measured (spatial entropy, peak concentration) per token and per word, every step; the measures run on
  batches of MEASURE_BATCH step maps held in a fixed buffer (fewer small torch calls per step).

So memory is: a few (tokens x h x w) accumulators + the strided per-step maps (+ per-layer maps when the
breakdown is asked for) + O(steps x tokens) scalars. :func:`estimate_bytes` gives that figure up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflens.attention.measures import entropy_and_peak
from difflens.attention.words import aggregate_words

F32 = 4
#: Step maps measured together (entropy, peak concentration); the buffer is allocated once.
MEASURE_BATCH = 8


def kept_steps(n_steps: int, stride: int) -> list[int]:
    """Step indices whose maps are kept: 0, K, 2K, ..."""
    return list(range(0, max(n_steps, 0), max(stride, 1)))


def estimate_bytes(n_tokens: int, latent_hw: tuple[int, int], n_steps: int, stride: int, joint: bool,
                   n_layers_breakdown: int = 0, max_queries: int | None = None, max_keys: int = 77,
                   max_heads: int = 1, chunk_bytes: int = 256 * 2**20) -> dict[str, int]:
    """Bytes the capture will hold: stored maps and the largest transient probability chunk.

    ``n_steps`` counts denoiser steps (a scheduler may add one, as PNDM does; pass the upper bound).
    """
    H, W = latent_hw
    plane = n_tokens * H * W * F32
    n_kept = len(kept_steps(n_steps, stride))
    planes = (2 * n_tokens + 1 if joint else n_tokens) * H * W * F32
    accum = 2 * planes + MEASURE_BATCH * plane          # running step sum and total, measure buffer
    per_step = n_kept * (plane + (H * W * F32 if joint else 0))
    per_layer = n_layers_breakdown * plane
    nq = max_queries if max_queries is not None else H * W
    per_head = nq * max_keys * F32
    hc = max(1, min(max_heads, chunk_bytes // max(per_head, 1)))
    token_part = n_tokens * nq * F32 * (3 if joint else 1)
    transient = 2 * hc * per_head + token_part
    total = accum + per_step + per_layer + transient
    return {"accumulators": accum, "per_step": per_step, "per_layer": per_layer, "transient": transient,
            "total": total, "kept_steps": n_kept, "per_head": per_head, "heads_per_chunk": hc,
            "chunk_bytes": chunk_bytes, "fixed": total - 2 * hc * per_head}


@dataclass
class AggregateResult:
    """Everything the aggregation produced, as numpy arrays (float32)."""

    maps: Any                       # (T, H, W): mean over steps of the layer- and head-mean maps
    per_step: Any                   # (K, T, H, W)
    per_step_index: list[int]       # the K step indices
    steps_seen: list[int]           # every step that contributed
    token_entropy: Any              # (S, T)
    token_peak: Any                 # (S, T)
    word_entropy: Any               # (S, Wd)
    word_peak: Any                  # (S, Wd)
    text_mass: Any | None = None            # (H, W) joint: mean share of probability on text keys
    text_mass_per_step: Any | None = None   # (K, H, W)
    maps_text_renorm: Any | None = None     # (T, H, W) joint: text-renormalized maps
    per_layer: Any | None = None            # (L, T, H, W) breakdown
    head_entropy: dict[str, Any] = field(default_factory=dict)  # layer -> (heads, T)
    stored_bytes: int = 0


class OnlineAggregator:
    """Accumulate per-layer, per-step token maps into totals and strided per-step maps.

    Internally every call is one stack of planes: the T token maps, and for joint attention also the text
    mass and the T text-renormalized maps (2T + 1 planes), so each step costs one resize per grid.
    """

    def __init__(self, n_tokens: int, latent_hw: tuple[int, int], stride: int, layer_names: list[str],
                 joint: bool, word_groups: list[list[int]], word_mode: str = "mean",
                 breakdown: bool = False, device: Any = "cpu") -> None:
        import torch

        self.T = n_tokens
        self.H, self.W = latent_hw
        self.C = 2 * n_tokens + 1 if joint else n_tokens
        self.stride = max(1, int(stride))
        self.layer_names = list(layer_names)
        self.joint = joint
        self.groups = word_groups
        self.word_mode = word_mode
        self.breakdown = breakdown
        self.device = torch.device(device)
        z = lambda *s: torch.zeros(s, dtype=torch.float32, device=self.device)  # noqa: E731
        self._step_sum = z(self.C, self.H, self.W)
        self._step_layers = 0
        self._total = z(self.C, self.H, self.W)
        self._n_steps = 0
        self._kept_planes = self.T + 1 if joint else self.T      # maps (+ text mass) per kept step
        self._per_step: list[Any] = []
        self._per_step_index: list[int] = []
        self._steps_seen: list[int] = []
        self._ent: list[Any] = []
        self._pending = z(MEASURE_BATCH, self.T, self.H, self.W)   # step maps awaiting their measures
        self._n_pending = 0
        self._peak: list[Any] = []
        self._layer_sum = z(len(layer_names), self.T, self.H, self.W) if breakdown else None
        self._layer_count = [0] * len(layer_names)
        self._head_ent: dict[int, Any] = {}
        self._head_count: dict[int, int] = {}
        self._grid_sums: dict[tuple[int, int], Any] = {}
        self._word_weights = z(len(word_groups), self.T)
        for i, g in enumerate(word_groups):
            if g:
                self._word_weights[i, g] = 1.0 / len(g)
        self.current_step: int | None = None

    # -- per call ---------------------------------------------------------------------------------
    def resize(self, maps: Any) -> Any:
        """(C, h, w) -> (C, H, W), bilinear (identity at the latent resolution)."""
        import torch.nn.functional as F

        if tuple(maps.shape[-2:]) == (self.H, self.W):
            return maps
        return F.interpolate(maps.unsqueeze(0), size=(self.H, self.W), mode="bilinear",
                             align_corners=False).squeeze(0)

    def add(self, step: int, layer: int, maps: Any, text_mass: Any | None = None, renorm: Any | None = None,
            head_entropy: Any | None = None) -> None:
        """Add one layer's maps (T, h, w) for ``step`` (text_mass (h, w) and renorm (T, h, w) for joint)."""
        import torch

        if self.joint:
            planes = torch.cat([maps.float(), text_mass.float().unsqueeze(0), renorm.float()])
        else:
            planes = maps.float().clone()        # add_planes accumulates into the first tensor it gets
        self.add_planes(step, layer, planes, head_entropy)

    def add_planes(self, step: int, layer: int, planes: Any, head_entropy: Any | None = None) -> None:
        """Add one layer's stacked planes (C, h, w) for ``step``; the aggregator may keep ``planes``.

        Within a step, planes are summed at their native grid; resizing is linear, so each grid is
        resized once, when the step closes.
        """
        if self.current_step is not None and step != self.current_step:
            self.end_step()
        self.current_step = step
        if planes.device != self.device:        # e.g. model CPU offload moved the denoiser
            planes = planes.to(self.device)
        grid = (int(planes.shape[-2]), int(planes.shape[-1]))
        acc = self._grid_sums.get(grid)
        if acc is None:
            self._grid_sums[grid] = planes
        else:
            acc += planes
        self._step_layers += 1
        if self._layer_sum is not None:
            self._layer_sum[layer] += self.resize(planes[:self.T])
            self._layer_count[layer] += 1
        if head_entropy is not None:
            he = head_entropy.double().cpu()
            self._head_ent[layer] = self._head_ent.get(layer, 0) + he
            self._head_count[layer] = self._head_count.get(layer, 0) + 1

    def _words_of(self, maps: Any) -> Any:
        """(T, H, W) -> (Wd, H, W); the mean is one matrix product with the word/token weights."""
        if self.word_mode == "mean":
            return (self._word_weights @ maps.flatten(1)).view(-1, self.H, self.W)
        return aggregate_words(maps, self.groups, self.word_mode)

    def end_step(self) -> None:
        """Close the current step: update the total, keep it if on the stride, measure it."""

        if self.current_step is None or self._step_layers == 0:
            self._grid_sums.clear()
            self.current_step = None
            return
        step = self.current_step
        for acc in self._grid_sums.values():
            self._step_sum += self.resize(acc)
        self._grid_sums.clear()
        step_planes = self._step_sum.div_(self._step_layers)
        self._total += step_planes
        self._n_steps += 1
        self._steps_seen.append(step)
        if step % self.stride == 0:
            self._per_step.append(step_planes[:self._kept_planes].clone())
            self._per_step_index.append(step)
        self._pending[self._n_pending].copy_(step_planes[:self.T])
        self._n_pending += 1
        if self._n_pending == MEASURE_BATCH:
            self._measure_pending()
        self._step_sum.zero_()
        self._step_layers = 0
        self.current_step = None

    def _measure_pending(self) -> None:
        """Entropy and peak concentration of the buffered step maps, tokens then words, in one batch (the
        per-step measures cost a few dozen small torch calls; batching them keeps the capture's per-step
        cost low, and at most MEASURE_BATCH step maps are buffered, so memory stays flat in the steps)."""
        import torch

        if not self._n_pending:
            return
        maps = self._pending[:self._n_pending]                       # (K, T, H, W)
        self._n_pending = 0
        if self.word_mode == "mean":
            words = torch.matmul(self._word_weights, maps.flatten(2)).view(maps.shape[0], -1, self.H, self.W)
        else:
            words = torch.stack([self._words_of(m) for m in maps])
        ent, peak = entropy_and_peak(torch.cat([maps, words], dim=1))
        self._ent.extend(ent.unbind(0))
        self._peak.extend(peak.unbind(0))

    # -- results ----------------------------------------------------------------------------------
    def stored_bytes(self) -> int:
        """Bytes of every tensor the aggregator holds now."""
        tensors = [self._step_sum, self._total, *self._per_step, *self._grid_sums.values(), self._pending]
        if self._layer_sum is not None:
            tensors.append(self._layer_sum)
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def result(self) -> AggregateResult:
        import numpy as np
        import torch

        self.end_step()
        self._measure_pending()
        n = max(self._n_steps, 1)
        T, H, W = self.T, self.H, self.W
        nw = len(self.groups)
        total = (self._total / n).cpu().numpy()
        kept = (torch.stack(self._per_step).cpu().numpy() if self._per_step
                else np.zeros((0, self._kept_planes, H, W), np.float32))
        empty = np.zeros((0, T + nw), np.float32)
        ent = torch.stack(self._ent).float().cpu().numpy() if self._ent else empty
        peak = torch.stack(self._peak).float().cpu().numpy() if self._peak else empty
        res = AggregateResult(
            maps=total[:T], per_step=kept[:, :T], per_step_index=list(self._per_step_index),
            steps_seen=list(self._steps_seen), token_entropy=ent[:, :T], token_peak=peak[:, :T],
            word_entropy=ent[:, T:], word_peak=peak[:, T:], stored_bytes=self.stored_bytes(),
        )
        if self.joint:
            res.text_mass = total[T]
            res.text_mass_per_step = kept[:, T]
            res.maps_text_renorm = total[T + 1:]
        if self._layer_sum is not None:
            counts = torch.tensor([max(c, 1) for c in self._layer_count], dtype=torch.float32,
                                  device=self.device)
            res.per_layer = (self._layer_sum / counts[:, None, None, None]).cpu().numpy()
        for li, acc in self._head_ent.items():
            res.head_entropy[self.layer_names[li]] = (acc / self._head_count[li]).float().numpy()
        return res


def mib(n_bytes: float) -> str:
    """Human-readable MiB."""
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 / 10 else f"{n_bytes / 1024:.1f} KiB"

