"""The paired comparison of two sample sets A and B generated from the same prompts (pure numpy).

Unit of pairing: the prompt. For metric m and prompt p, ``a_p`` and ``b_p`` are the mean scores of A's and
B's images of p (the two sets may hold different numbers of images per prompt). Over the P prompts:

* ``mean_a = mean_p a_p``, ``mean_b = mean_p b_p`` (every prompt weighs the same) and the **difference**
  ``d = mean_a - mean_b = mean_p (a_p - b_p)``;
* the **win rate** of A over B: ``w = mean_p [a_p > b_p] + 0.5 [a_p == b_p]`` (a tie counts half);
* 95% intervals of both from a **paired bootstrap over prompts**: resample b draws P prompts with
  replacement (:func:`difflens.metrics.bootstrap.bootstrap_indices`, seeded) and takes the mean of
  ``a_p - b_p`` and of the win indicator over the same draws, so the pairing is kept; the interval is the
  percentile interval (Efron & Tibshirani 1993, ch. 13) of the B resampled values;
* the **verdict**: "A beats B on <metric> in 62% of prompts [58%, 66%]" when the win-rate interval lies
  above 50% (B beats A when below), "no clear difference" when it contains 50%.

Every score here is higher-is-better (CLIP score, HPSv2, PickScore, ImageReward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from difflens.errors import DifflensError

#: How many differing prompts an error message names.
SHOWN = 3
TIES = "a prompt where A's and B's mean scores are equal counts as half a win"


def fmean(values: Any) -> float:
    """``math.fsum(values) / n``: exactly rounded, so independent of the order of the rows."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return math.fsum(arr.tolist()) / len(arr)


def _short(prompt: str, limit: int = 60) -> str:
    return repr(prompt if len(prompt) <= limit else prompt[:limit - 3] + "...")


def check_same_prompts(prompts_a: Sequence[str], prompts_b: Sequence[str], name_a: str = "--a",
                       name_b: str = "--b") -> list[str]:
    """The sorted distinct prompts, when A and B share the same set; else one DifflensError naming up to
    :data:`SHOWN` prompts found on one side only."""
    set_a, set_b = set(prompts_a), set(prompts_b)
    if not set_a or not set_b:
        empty = name_a if not set_a else name_b
        raise DifflensError(f"{empty} has no images with prompts to compare.", "pass a folder of samples")
    if set_a == set_b:
        return sorted(set_a)
    only_a, only_b = sorted(set_a - set_b), sorted(set_b - set_a)
    parts = []
    for side, only in ((name_a, only_a), (name_b, only_b)):
        if only:
            more = f" and {len(only) - SHOWN} more" if len(only) > SHOWN else ""
            parts.append(f"{len(only)} only in {side} ({', '.join(_short(p) for p in only[:SHOWN])}{more})")
    raise DifflensError(f"the two sample sets were not generated from the same prompts: {'; '.join(parts)}.",
                        "generate both sets from the same prompts file (difflens generate --prompts FILE), "
                        "or pass the same --prompts to both")


def per_prompt_means(scores: Any, prompts: Sequence[str],
                     order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean score, image count) per prompt of ``order``."""
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.shape[0] != len(prompts):
        raise DifflensError(f"{arr.shape[0]} scores but {len(prompts)} prompts.", "give one prompt per image")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    means = np.array([fmean(arr[groups[p]]) for p in order], dtype=np.float64)
    counts = np.array([len(groups[p]) for p in order], dtype=np.int64)
    return means, counts


def percent(x: float) -> str:
    return f"{100.0 * x:.0f}%"


def verdict(label: str, win: float, ci: tuple[float, float] | None) -> str:
    """The plain verdict line (see the module docstring)."""
    if ci is None:
        return (f"A wins {percent(win)} of prompts on {label} (no interval with --bootstrap 0, so no "
                "verdict)")
    lo, hi = ci
    if lo > 0.5:
        return f"A beats B on {label} in {percent(win)} of prompts [{percent(lo)}, {percent(hi)}]"
    if hi < 0.5:
        return f"B beats A on {label} in {percent(1 - win)} of prompts [{percent(1 - hi)}, {percent(1 - lo)}]"
    return (f"no clear difference on {label}: A wins {percent(win)} of prompts [{percent(lo)}, "
            f"{percent(hi)}], an interval that contains 50%")


@dataclass
class PairedResult:
    """One metric compared between A and B, prompt by prompt."""

    key: str
    label: str
    prompts: list[str]
    mean_a: np.ndarray  # per prompt
    mean_b: np.ndarray
    count_a: np.ndarray
    count_b: np.ndarray
    difference: float
    win_rate: float
    difference_ci95: tuple[float, float] | None
    win_rate_ci95: tuple[float, float] | None
    bootstrap: int
    seed: int

    @property
    def verdict(self) -> str:
        return verdict(self.label, self.win_rate, self.win_rate_ci95)

    def winners(self) -> list[str]:
        pairs = zip(self.mean_a, self.mean_b, strict=True)
        return ["A" if a > b else "B" if b > a else "tie" for a, b in pairs]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label, "verdict": self.verdict,
            "mean_a": fmean(self.mean_a), "mean_b": fmean(self.mean_b),
            "difference": {"value": self.difference},
            "win_rate": {"value": self.win_rate, "ties": TIES},
            "n_prompts": len(self.prompts), "n_a": int(self.count_a.sum()), "n_b": int(self.count_b.sum()),
            "wins": {w: self.winners().count(w) for w in ("A", "B", "tie")},
        }
        if self.difference_ci95 is not None and self.win_rate_ci95 is not None:
            out["difference"]["ci95"] = list(self.difference_ci95)
            out["win_rate"]["ci95"] = list(self.win_rate_ci95)
        return out

    def per_prompt(self) -> list[dict[str, Any]]:
        """One row per prompt (sorted): counts, means, difference A - B and the winner."""
        return [{"prompt": p, "n_a": int(na), "n_b": int(nb), "mean_a": float(a), "mean_b": float(b),
                 "difference": float(a - b), "winner": w}
                for p, na, nb, a, b, w in zip(self.prompts, self.count_a, self.count_b, self.mean_a,
                                              self.mean_b, self.winners(), strict=True)]


def paired_comparison(key: str, label: str, scores_a: Any, prompts_a: Sequence[str], scores_b: Any,
                      prompts_b: Sequence[str], *, bootstrap: int = 1000, seed: int = 0) -> PairedResult:
    """Compare per-image scores of A and B prompt by prompt (see the module docstring)."""
    from difflens.metrics.bootstrap import bootstrap_counts, percentile_interval

    if int(bootstrap) < 0:
        raise DifflensError(f"--bootstrap must be >= 0, got {bootstrap}.", "use e.g. --bootstrap 1000")
    order = check_same_prompts(prompts_a, prompts_b)
    for name, arr in (("A", scores_a), ("B", scores_b)):
        if not np.all(np.isfinite(np.asarray(arr, dtype=np.float64))):
            raise DifflensError(f"{label}: some scores of {name} are NaN or infinite.",
                                "check the images (all-black or NaN samples) and the scoring model")
    mean_a, count_a = per_prompt_means(scores_a, prompts_a, order)
    mean_b, count_b = per_prompt_means(scores_b, prompts_b, order)
    d = mean_a - mean_b
    w = np.where(mean_a > mean_b, 1.0, np.where(mean_a == mean_b, 0.5, 0.0))
    diff_ci = win_ci = None
    if bootstrap > 0:
        counts = bootstrap_counts(len(order), int(bootstrap), int(seed)).astype(np.float64)  # (B, P)
        diff_ci = percentile_interval(counts @ d / len(order))
        win_ci = percentile_interval(counts @ w / len(order))
    return PairedResult(key=key, label=label, prompts=order, mean_a=mean_a, mean_b=mean_b, count_a=count_a,
                        count_b=count_b, difference=fmean(d), win_rate=fmean(w), difference_ci95=diff_ci,
                        win_rate_ci95=win_ci, bootstrap=int(bootstrap), seed=int(seed))
