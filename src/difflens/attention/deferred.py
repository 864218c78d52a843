"""Layer calls scored later, many at once: the capture's batching of small models' attention calls.

On a small model each captured layer call costs the log-sum-exp route about 15 torch calls
(:func:`difflens.attention.text_probs.lse_columns`) and the aggregator a few more, at about 10 us each on a
CPU, while the layer itself runs in 100-300 us: the per-call overhead, not the arithmetic, is the cost. So
after a layer's first call (which runs the checks and is scored at once), the capture hands its later calls
here: each call's tapped q, k and log-sum-exp are kept (references, no copy), and the calls of the same
shapes, across layers and up to a batch of the aggregator's steps, are scored as one stacked batch
(``lse_columns`` on a sequence of records) and added with one ``index_add_`` per grid
(:meth:`difflens.attention.aggregate.OnlineAggregator.add_calls`). The probabilities are the same ones,
row by row; only the number of torch calls changes.

Bounds: the kept tensors and the stacked batch stay under the capture's budget, at most :data:`DEFER_BYTES`
and never more than its chunk of transient bytes (a call whose share would exceed an eighth of it is scored at
once, as on large models, where the per-call overhead is small next to the layer), and the calls never span
more than the aggregator's open batch of steps, so memory is bounded whatever the step count (the preflight
estimate counts this budget: :func:`difflens.attention.aggregate.estimate_bytes`). A kept tensor changed in
place after its call (its version counter moved) is an error, never a silent wrong map.
"""

from __future__ import annotations

from typing import Any

from difflens.attention.lse import TapRecord
from difflens.attention.text_probs import Ranges, lse_columns
from difflens.errors import DifflensError

#: Most bytes the deferred calls may hold (their q, k, lse and mask storages) plus their stacked scores.
DEFER_BYTES = 32 * 2**20


def _storage_bytes(rec: TapRecord) -> int:
    tensors = (rec.query, rec.key, rec.lse, rec.mask)
    return sum(int(t.untyped_storage().nbytes()) for t in tensors if t is not None)


class DeferredCalls:
    """Pending layer calls of one capture, grouped by their shapes; :meth:`flush` scores and adds them."""

    def __init__(self, aggregator: Any, token_keys: Any, budget: int = DEFER_BYTES) -> None:
        self.aggregator = aggregator
        self.token_keys = token_keys
        self.budget = min(int(budget), DEFER_BYTES)        # bytes held and stacked at most
        self._groups: dict[tuple, list[tuple[int, int, TapRecord]]] = {}   # key -> [(layer, step, record)]
        self._layouts: dict[tuple, tuple[Ranges, slice, tuple[int, int]]] = {}   # key -> ranges, rows, grid
        self._memos: dict[tuple, dict[str, Any]] = {}     # per group, for lse_columns (trailing key runs)
        self._costs: dict[tuple, int] = {}                 # (layer, group) -> bytes per call (see _cost)
        self._steps: list[int] = []                       # distinct pending steps, ascending
        self.held_bytes = 0
        self.peak_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._steps)

    def offer(self, index: int, step: int, rec: TapRecord, rng: Ranges, rows: slice,
              grid: tuple[int, int]) -> tuple[tuple, int] | None:
        """Keep this call for later and return its (group, bytes), which :meth:`keep` takes for the layer's
        next calls of the same shapes; or None (too large, not on CPU, or its tensors keep no version
        counter: then the caller scores it at once)."""
        q, k = rec.query, rec.key
        key = (rng.joint, rng.queries.start, rng.queries.stop, rng.text.start, rng.text.stop, rows.start,
               rows.stop, tuple(q.shape), tuple(k.shape), q.dtype, q.device.type,
               None if rec.mask is None else (tuple(rec.mask.shape), rec.mask.dtype), rec.scale)
        cost = self._costs.get((index, key))
        if cost is None:
            cost = self._costs[(index, key)] = self._cost(rec, rng, rows)
        if rec.versions is None or cost > self.budget // 8:
            return None
        self._layouts[key] = (rng, rows, grid)
        self.keep(index, step, rec, key, cost)
        return key, cost

    def keep(self, index: int, step: int, rec: TapRecord, key: tuple, cost: int) -> None:
        """Keep a call whose group and bytes :meth:`offer` found for an earlier call of the same layer and
        shapes; first score what is pending when the call would not fit the byte bound or the aggregator's
        open batch of steps."""
        new_step = not self._steps or step != self._steps[-1]
        if self._steps and (self.held_bytes + cost > self.budget or (
                new_step and len(self._steps) >= self.aggregator.steps_room(self._steps[0]))):
            self.flush()
            new_step = True
        self._groups.setdefault(key, []).append((index, step, rec))
        if new_step:
            self._steps.append(step)
        self.held_bytes += cost
        if self.held_bytes > self.peak_bytes:
            self.peak_bytes = self.held_bytes

    @staticmethod
    def _cost(rec: TapRecord, rng: Ranges, rows: slice) -> int:
        """Bytes a deferred call holds (its tensors' storages) and adds to the stacked scores; more than
        :data:`DEFER_BYTES` where it cannot be deferred (not CPU, or sequences unlike the layer's layout)."""
        q, k = rec.query, rec.key
        lengths = (int(q.shape[2]), int(k.shape[2]))
        if q.device.type != "cpu" or lengths != (rng.n_queries_all, rng.n_keys_all):
            return DEFER_BYTES + 1
        n_rows = len(range(*rows.indices(int(q.shape[0])))) * int(q.shape[1])
        return _storage_bytes(rec) + 2 * 4 * n_rows * rng.n_queries * (rng.n_text + 1)

    def flush(self) -> None:
        """Score every pending call (one stacked batch per group) and add them to the aggregator."""
        if not self._groups:
            return
        parts = []
        for key, entries in self._groups.items():
            for index, step, rec in entries:
                if not rec.unchanged():
                    self.discard()
                    raise DifflensError(
                        f"the attention inputs of captured layer {index} (step {step}) were changed in place "
                        "after the attention call, so its probabilities can no longer be computed from them.",
                        "report this with the pipeline's attention processor; capturing with "
                        "AttentionCapture(..., defer=False) scores each call at once")
            rng, rows, grid = self._layouts[key]
            memo = self._memos.setdefault(key, {"lse_agrees": True})    # only agreeing layers are deferred
            fast = lse_columns([rec for _, _, rec in entries], rng, rows, self.token_keys, head_entropy=False,
                               chunk_bytes=self.budget, drift=False, memo=memo)
            if fast is None:                        # cannot happen: offer() checked the shapes
                raise RuntimeError("deferred attention calls no longer match their layout")
            planes = fast["planes"]
            parts.append(([step for _, step, _ in entries], planes.view(*planes.shape[:2], *grid)))
        self.discard()
        self.aggregator.add_calls(parts)

    def discard(self) -> None:
        """Forget every pending call."""
        self._groups.clear()
        self._steps.clear()
        self.held_bytes = 0
