"""Online aggregation of attention maps, in memory that does not grow with the number of steps.

Each captured layer call brings, per kept token, a map on that layer's token grid (already averaged over
heads and over the conditional rows). Maps of other resolutions are resized (bilinear) to the latent grid.
Within a step, maps are averaged over the selected layers; the step map is then

* added to the running total (the final ``maps`` are the mean over all steps),
* kept as a per-step map when ``step % stride == 0``,
* measured (spatial entropy, peak concentration) per token and per word, every step.

Steps are closed in batches of MEASURE_BATCH: each layer's planes are summed into its grid's slot of a fixed
(MEASURE_BATCH, C, h, w) buffer, and every MEASURE_BATCH steps the buffered step sums are resized together
(bilinear, as two matrix products with :func:`resize_matrix`), averaged over their layers and measured. A step
then costs one addition per layer call, not a dozen small torch calls (on small models those calls, not the
arithmetic, were the capture's cost).

So memory is: the (C x H x W) total + one (MEASURE_BATCH x C x h x w) buffer per grid + the strided per-step
maps (+ per-layer maps when the breakdown is asked for) + O(steps x tokens) scalars. :func:`estimate_bytes`
gives that figure up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflens.attention.deferred import DEFER_BYTES
from difflens.attention.layout import grid_sizes
from difflens.attention.measures import entropy_and_peak
from difflens.attention.words import aggregate_words

F32 = 4
#: Step maps measured together (entropy, peak concentration); the buffer is allocated once. (16 and 32 were
#: tried in session 5: no measurable change in the capture's cost on the tiny pipelines, so 8 stays.)
MEASURE_BATCH = 8


def kept_steps(n_steps: int, stride: int) -> list[int]:
    """Step indices whose maps are kept: 0, K, 2K, ..."""
    return list(range(0, max(n_steps, 0), max(stride, 1)))


def resize_matrix(n: int, size: int) -> Any:
    """(size, n) float32 matrix M with ``M @ x`` = ``F.interpolate(x, size, mode="linear",
    align_corners=False)`` along one axis: the weights are torch's own (the interpolation of the identity),
    so a bilinear resize is ``M_h @ maps @ M_w.T`` (separable; equal to the 2-D call to ~1e-7)."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(n, dtype=torch.float32).unsqueeze(1)                     # (n, 1, n)
    return F.interpolate(eye, size=size, mode="linear", align_corners=False).squeeze(1).t().contiguous()


def estimate_bytes(n_tokens: int, latent_hw: tuple[int, int], n_steps: int, stride: int, joint: bool,
                   n_layers_breakdown: int = 0, max_queries: int | None = None, max_keys: int = 77,
                   max_heads: int = 1, chunk_bytes: int = 256 * 2**20) -> dict[str, int]:
    """Bytes the capture will hold: stored maps, the largest transient probability chunk, and the calls the
    capture may defer on CPU (:mod:`difflens.attention.deferred`: at most ``chunk_bytes``, capped at
    ``DEFER_BYTES``).

    ``n_steps`` counts denoiser steps (a scheduler may add one, as PNDM does; pass the upper bound).
    """
    H, W = latent_hw
    plane = n_tokens * H * W * F32
    n_kept = len(kept_steps(n_steps, stride))
    n_planes = 2 * n_tokens + 1 if joint else n_tokens
    planes = n_planes * H * W * F32
    grids = sum(h * w for h, w in grid_sizes(latent_hw)) * n_planes * F32     # every possible grid
    accum = planes + MEASURE_BATCH * (grids + planes)   # total, step buffers, one batch of resized steps
    per_step = n_kept * (plane + (H * W * F32 if joint else 0))
    per_layer = n_layers_breakdown * plane
    nq = max_queries if max_queries is not None else H * W
    per_head = nq * max_keys * F32
    hc = max(1, min(max_heads, chunk_bytes // max(per_head, 1)))
    token_part = n_tokens * nq * F32 * (3 if joint else 1)
    transient = 2 * hc * per_head + token_part + min(DEFER_BYTES, chunk_bytes)
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
    mass and the T text-renormalized maps (2T + 1 planes). Steps are closed in batches (module docstring).
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
        self._total = z(self.C, self.H, self.W)
        self._n_steps = 0
        self._kept_planes = self.T + 1 if joint else self.T      # maps (+ text mass) per kept step
        self._per_step: list[Any] = []          # (k, kept planes, H, W) per closed batch
        self._per_step_index: list[int] = []
        self._steps_seen: list[int] = []
        self._ent: list[Any] = []
        self._peak: list[Any] = []
        self._buffers: dict[tuple[int, int], Any] = {}     # grid -> (MEASURE_BATCH, C, h, w) step sums
        self._resizers: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._slot = 0                           # the buffer slot of the open step
        self._slot_steps: list[int] = []         # step index of each closed slot
        self._slot_layers: list[int] = []        # layer calls summed into each closed slot
        self._step_layers = 0
        self._layer_sum = z(len(layer_names), self.T, self.H, self.W) if breakdown else None
        self._layer_count = [0] * len(layer_names)
        self._head_ent: dict[int, Any] = {}
        self._head_count: dict[int, int] = {}
        # words: a single-token word's map is its token's map, so only the other words are computed and
        # measured; _word_columns picks each word's measure from the [tokens, other words] columns
        self._multi = [i for i, g in enumerate(word_groups) if len(g) != 1]
        self._multi_weights = z(len(self._multi), self.T)
        for row, i in enumerate(self._multi):
            if word_groups[i]:
                self._multi_weights[row, word_groups[i]] = 1.0 / len(word_groups[i])
        cols = [g[0] if len(g) == 1 else self.T + self._multi.index(i) for i, g in enumerate(word_groups)]
        self._word_columns = torch.tensor(list(range(self.T)) + cols, dtype=torch.long, device=self.device)
        self.current_step: int | None = None

    # -- per call ---------------------------------------------------------------------------------
    def resize(self, maps: Any) -> Any:
        """(..., h, w) -> (..., H, W), bilinear (torch's weights as two matrix products; identity at the
        latent resolution)."""
        grid = (int(maps.shape[-2]), int(maps.shape[-1]))
        if grid == (self.H, self.W):
            return maps
        mats = self._resizers.get(grid)
        if mats is None:
            mats = (resize_matrix(grid[0], self.H).to(self.device),
                    resize_matrix(grid[1], self.W).t().contiguous().to(self.device))
            self._resizers[grid] = mats
        return mats[0] @ maps @ mats[1]

    def add(self, step: int, layer: int, maps: Any, text_mass: Any | None = None, renorm: Any | None = None,
            head_entropy: Any | None = None) -> None:
        """Add one layer's maps (T, h, w) for ``step`` (text_mass (h, w) and renorm (T, h, w) for joint)."""
        import torch

        if self.joint:
            planes = torch.cat([maps.float(), text_mass.float().unsqueeze(0), renorm.float()])
        else:
            planes = maps.float()
        self.add_planes(step, layer, planes, head_entropy)

    def _buffer(self, grid: tuple[int, int]) -> Any:
        """The (MEASURE_BATCH, C, h, w) step sums of one grid."""
        import torch

        buf = self._buffers.get(grid)
        if buf is None:
            buf = self._buffers[grid] = torch.zeros((MEASURE_BATCH, self.C, *grid), dtype=torch.float32,
                                                    device=self.device)
        return buf

    def add_planes(self, step: int, layer: int, planes: Any, head_entropy: Any | None = None) -> None:
        """Add one layer's stacked planes (C, h, w) for ``step``: one addition into its grid's slot (resizing
        is linear, so each grid is resized when the batch of steps closes)."""

        if self.current_step is not None and step != self.current_step:
            self.end_step()
        self.current_step = step
        if planes.device != self.device:        # e.g. model CPU offload moved the denoiser
            planes = planes.to(self.device)
        self._buffer((int(planes.shape[-2]), int(planes.shape[-1])))[self._slot] += planes
        self._step_layers += 1
        if self._layer_sum is not None:
            self._layer_sum[layer] += self.resize(planes[:self.T].float())
            self._layer_count[layer] += 1
        if head_entropy is not None:
            he = head_entropy.double().cpu()
            self._head_ent[layer] = self._head_ent.get(layer, 0) + he
            self._head_count[layer] = self._head_count.get(layer, 0) + 1

    def steps_room(self, first_step: int) -> int:
        """How many consecutive steps from ``first_step`` :meth:`add_calls` can take in one call: the steps
        left in the open batch (a full batch once the open step, if it is another one, closes it)."""
        if self.current_step is None or not self._step_layers or self.current_step == first_step:
            return MEASURE_BATCH - self._slot
        after = self._slot + 1                 # ending the open step takes its slot
        return MEASURE_BATCH if after == MEASURE_BATCH else MEASURE_BATCH - after

    def add_calls(self, parts: list[tuple[list[int], Any]]) -> None:
        """Add many layer calls at once: ``parts`` holds (steps, planes (n, C, h, w)) per grid, one step per
        plane stack, none before the open step, at most :meth:`steps_room` distinct steps. Each grid gets one
        ``index_add_`` into its slots (the capture's deferred calls; no per-layer breakdown)."""
        import torch

        if self._layer_sum is not None and parts:
            raise ValueError("add_calls does not keep the per-layer breakdown; use add_planes")
        counts: dict[int, int] = {}
        for steps, _ in parts:
            for step in steps:
                counts[step] = counts.get(step, 0) + 1
        order = sorted(counts)
        if not order:
            return
        if (self.current_step is not None and order[0] < self.current_step) or len(order) > self.steps_room(
                order[0]):
            raise ValueError(f"steps {order[0]}..{order[-1]} do not fit the open batch of steps")
        slot_of: dict[int, int] = {}
        for step in order:          # only ending the step open before these can close a batch, before any add
            if step != self.current_step:
                self.end_step()
                self.current_step = step
            slot_of[step] = self._slot
            self._step_layers += counts[step]
        for steps, planes in parts:
            if planes.device != self.device:
                planes = planes.to(self.device)
            grid = (int(planes.shape[-2]), int(planes.shape[-1]))
            slots = torch.tensor([slot_of[s] for s in steps], dtype=torch.long, device=self.device)
            self._buffer(grid).index_add_(0, slots, planes.float())

    def end_step(self) -> None:
        """Close the current step (its slot); every MEASURE_BATCH steps, close the batch."""
        if self.current_step is not None and self._step_layers:
            self._slot_steps.append(self.current_step)
            self._slot_layers.append(self._step_layers)
            self._slot += 1
            if self._slot == MEASURE_BATCH:
                self._close_batch()
        self._step_layers = 0
        self.current_step = None

    def _close_batch(self) -> None:
        """The buffered steps: resized per grid, summed, divided by their layer counts, added to the total,
        kept on the stride, measured (tokens, then the words that are not single tokens); buffers zeroed."""
        import torch

        n = self._slot
        if not n:
            return
        counts = torch.tensor(self._slot_layers, dtype=torch.float32, device=self.device)
        weights = 1.0 / counts
        kp = self._kept_planes     # per-step planes; the others (text-renormalized maps) only feed the total
        steps = rest = None
        for buf in self._buffers.values():
            part = self.resize(buf[:n, :kp])
            steps = (part.clone() if part.data_ptr() == buf.data_ptr() else part) if steps is None else (
                steps.add_(part))
            if kp < self.C:            # summed over the steps first (resizing is linear): one resize
                summed = torch.matmul(weights, buf[:n, kp:].reshape(n, -1)).view(-1, *buf.shape[2:])
                rest = self.resize(summed) if rest is None else rest.add_(self.resize(summed))
            buf[:n].zero_()
        steps.div_(counts.view(n, 1, 1, 1))
        self._total[:kp] += steps.sum(0)
        if rest is not None:
            self._total[kp:] += rest
        kept = [i for i, s in enumerate(self._slot_steps) if s % self.stride == 0]
        if kept:
            self._per_step.append(steps[kept])               # steps holds the per-step planes only
            self._per_step_index.extend(self._slot_steps[i] for i in kept)
        self._steps_seen.extend(self._slot_steps)
        self._n_steps += n
        maps = steps[:, :self.T]                                             # (n, T, H, W)
        if self._multi and self.word_mode == "mean":
            words = torch.matmul(self._multi_weights, maps.flatten(2)).view(n, -1, self.H, self.W)
            maps = torch.cat([maps, words], dim=1)
        elif self._multi:
            maps = torch.cat([maps, aggregate_words(maps, [self.groups[i] for i in self._multi],
                                                    self.word_mode)], dim=1)
        ent, peak = entropy_and_peak(maps)
        self._ent.extend(ent.index_select(1, self._word_columns).unbind(0))
        self._peak.extend(peak.index_select(1, self._word_columns).unbind(0))
        self._slot = 0
        self._slot_steps.clear()
        self._slot_layers.clear()

    # -- results ----------------------------------------------------------------------------------
    def stored_bytes(self) -> int:
        """Bytes of every tensor the aggregator holds now."""
        tensors = [self._total, *self._per_step, *self._buffers.values()]
        if self._layer_sum is not None:
            tensors.append(self._layer_sum)
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def result(self) -> AggregateResult:
        import numpy as np
        import torch

        self.end_step()
        self._close_batch()
        n = max(self._n_steps, 1)
        T, H, W = self.T, self.H, self.W
        nw = len(self.groups)
        total = (self._total / n).cpu().numpy()
        kept = (torch.cat(self._per_step).cpu().numpy() if self._per_step
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

