"""The generate batch size: fixed, or found automatically by throughput, halved on out-of-memory."""

from __future__ import annotations


class BatchSizer:
    """Fixed batch size, or an automatic one: start at 1, double while throughput improves by >= 10%,
    keep the best; halve on out-of-memory. Each candidate size is timed on ``trials`` full batches and
    rated by its fastest one (the least disturbed by other load). The samples made while probing are
    kept (nothing is wasted).
    """

    def __init__(self, fixed: int | None, cap: int, trials: int = 2) -> None:
        self.fixed = fixed
        self.cap = max(1, cap)
        self.trials = max(1, trials)
        self.size = fixed or 1
        self.settled = fixed is not None
        self.best_rate = 0.0
        self.best_size = self.size
        self._warm = fixed is not None
        self._rates: list[float] = []

    def next(self, remaining: int) -> int:
        return max(1, min(self.size, remaining))

    def record(self, size: int, n: int, seconds: float) -> None:
        """Feed the time one batch took."""
        if self.settled or n < self.size:  # a short last batch says nothing about this size
            return
        if not self._warm:  # the first call pays one-off costs (allocations, kernel selection)
            self._warm = True
            return
        self._rates.append(n / max(seconds, 1e-9))
        if len(self._rates) < self.trials:
            return
        rate, self._rates = max(self._rates), []
        if self.best_rate == 0.0 or rate >= self.best_rate * 1.10:
            self.best_rate, self.best_size = rate, size
            if size * 2 <= self.cap:
                self.size = size * 2
                return
        self.size = self.best_size
        self.settled = True

    def shrink(self) -> bool:
        """After an out-of-memory error: halve and settle. False when already at 1."""
        if self.size <= 1:
            return False
        self.size = max(1, self.size // 2)
        self.best_size = min(self.best_size, self.size)
        self.settled = True
        return True


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
