"""The paired comparison's arithmetic (difflens.compare.core), on constructed per-image scores: means per
prompt, difference, win rate with ties counted half, the paired bootstrap over prompts against a direct
loop over the same resamples, the verdicts and the prompt-set check. Pure numpy, no model."""

from __future__ import annotations

import numpy as np
import pytest

from difflens.compare.core import check_same_prompts, paired_comparison, verdict
from difflens.errors import DifflensError
from difflens.metrics.bootstrap import bootstrap_indices


def _scores(means: dict[str, list[float]], order: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per-image scores and prompts, in the row order ``order`` (prompts repeated)."""
    queues = {p: list(v) for p, v in means.items()}
    scores, prompts = [], []
    for p in order:
        scores.append(queues[p].pop(0))
        prompts.append(p)
    assert all(not q for q in queues.values())
    return np.array(scores), prompts


def test_difference_and_win_rate_by_hand_with_a_tie_and_unequal_counts() -> None:
    # prompt means A: w=1, x=2, y=3, z=4; B: w=0, x=2 (tie), y=5, z=1 (B has 3 images of z, A has 1)
    a, pa = _scores({"w": [0.5, 1.5], "x": [2.0], "y": [3.0, 2.0, 4.0], "z": [4.0]},
                    ["y", "w", "z", "y", "x", "w", "y"])
    b, pb = _scores({"w": [0.0], "x": [1.0, 3.0], "y": [5.0], "z": [0.0, 1.0, 2.0]},
                    ["z", "x", "y", "z", "w", "x", "z"])
    r = paired_comparison("s", "S", a, pa, b, pb, bootstrap=0)
    assert r.prompts == ["w", "x", "y", "z"]
    assert r.mean_a.tolist() == [1.0, 2.0, 3.0, 4.0] and r.mean_b.tolist() == [0.0, 2.0, 5.0, 1.0]
    assert r.count_a.tolist() == [2, 1, 3, 1] and r.count_b.tolist() == [1, 2, 1, 3]
    assert r.winners() == ["A", "tie", "B", "A"]
    assert r.win_rate == pytest.approx((1 + 0.5 + 0 + 1) / 4, abs=0)
    assert r.difference == pytest.approx((1 + 0 - 2 + 3) / 4, abs=1e-15)
    out = r.to_json()
    assert out["wins"] == {"A": 2, "B": 1, "tie": 1} and out["n_a"] == 7 and out["n_b"] == 7
    assert "ci95" not in out["win_rate"] and "half" in out["win_rate"]["ties"]
    assert out["mean_a"] - out["mean_b"] == pytest.approx(out["difference"]["value"], abs=1e-12)
    assert "no verdict" in out["verdict"]


def test_paired_bootstrap_equals_a_direct_loop_over_the_same_resampled_prompts() -> None:
    rng = np.random.default_rng(3)
    prompts = [f"prompt {i}" for i in range(37)]
    a = rng.normal(0.2, 1.0, 74)
    b = rng.normal(0.0, 1.0, 111)
    pa, pb = prompts * 2, prompts * 3
    r = paired_comparison("s", "S", a, pa, b, pb, bootstrap=400, seed=11)
    order = sorted(prompts)
    ma = np.array([a[[i for i, q in enumerate(pa) if q == p]].mean() for p in order])
    mb = np.array([b[[i for i, q in enumerate(pb) if q == p]].mean() for p in order])
    diffs, wins = [], []
    for idx in bootstrap_indices(len(order), 400, 11):  # prompt indices, the same for A and B
        diffs.append((ma[idx] - mb[idx]).mean())
        wins.append(np.where(ma[idx] > mb[idx], 1.0, np.where(ma[idx] == mb[idx], 0.5, 0.0)).mean())
    # summation order differs (matrix product vs loop): float64 rounding only, far below 1e-9
    assert r.difference_ci95 == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), rel=1e-9, abs=1e-12)
    assert r.win_rate_ci95 == pytest.approx(tuple(np.percentile(wins, [2.5, 97.5])), rel=1e-9, abs=1e-12)
    same = paired_comparison("s", "S", a, pa, b, pb, bootstrap=400, seed=11)
    assert same.win_rate_ci95 == r.win_rate_ci95 and same.difference_ci95 == r.difference_ci95
    other = paired_comparison("s", "S", a, pa, b, pb, bootstrap=400, seed=12)
    assert other.difference_ci95 != r.difference_ci95


def test_pairing_by_prompt_sees_a_small_shift_that_prompt_variance_would_hide() -> None:
    """B = A - 0.1 on every prompt while prompts differ by +-5: the paired interval excludes 0 and A wins
    every prompt; an unpaired interval (resampling A's and B's prompts independently) would not."""
    rng = np.random.default_rng(0)
    prompts = [f"p{i}" for i in range(60)]
    level = rng.normal(0.0, 5.0, 60)
    r = paired_comparison("s", "S", level + 0.1, prompts, level, prompts, bootstrap=500, seed=0)
    assert r.win_rate == 1.0 and r.win_rate_ci95 == (1.0, 1.0)
    assert r.difference_ci95 is not None and r.difference_ci95[0] > 0.09
    assert r.verdict == "A beats B on S in 100% of prompts [100%, 100%]"
    unpaired = [(level + 0.1)[i].mean() - level[j].mean()
                for i, j in zip(bootstrap_indices(60, 500, 0), bootstrap_indices(60, 500, 1), strict=True)]
    lo, hi = np.percentile(unpaired, [2.5, 97.5])
    assert lo < 0 < hi


def test_swapping_a_and_b_mirrors_every_number() -> None:
    rng = np.random.default_rng(5)
    prompts = [f"p{i}" for i in range(25)]
    a, b = rng.normal(0.3, 1, 25), rng.normal(0, 1, 25)
    ab = paired_comparison("s", "S", a, prompts, b, prompts, bootstrap=300, seed=2)
    ba = paired_comparison("s", "S", b, prompts, a, prompts, bootstrap=300, seed=2)
    assert ba.difference == pytest.approx(-ab.difference, abs=1e-12)
    assert ba.win_rate == pytest.approx(1 - ab.win_rate, abs=1e-12)
    assert ab.win_rate_ci95 is not None and ba.win_rate_ci95 is not None
    assert ba.win_rate_ci95 == pytest.approx((1 - ab.win_rate_ci95[1], 1 - ab.win_rate_ci95[0]), abs=1e-9)


@pytest.mark.parametrize(("win", "ci", "expected"), [
    (0.62, (0.58, 0.66), "A beats B on PickScore in 62% of prompts [58%, 66%]"),
    (0.3, (0.2, 0.4), "B beats A on PickScore in 70% of prompts [60%, 80%]"),
    (0.55, (0.45, 0.65), "no clear difference on PickScore: A wins 55% of prompts [45%, 65%], an interval "
                         "that contains 50%"),
    (0.6, (0.5, 0.7), "no clear difference on PickScore: A wins 60% of prompts [50%, 70%], an interval "
                      "that contains 50%"),
])
def test_verdict_lines(win: float, ci: tuple[float, float], expected: str) -> None:
    assert verdict("PickScore", win, ci) == expected


def test_identical_sets_tie_everywhere_and_give_no_clear_difference() -> None:
    prompts = [f"p{i}" for i in range(10)]
    s = np.linspace(0, 1, 10)
    r = paired_comparison("s", "S", s, prompts, s.copy(), prompts, bootstrap=100, seed=0)
    assert r.win_rate == 0.5 and r.win_rate_ci95 == (0.5, 0.5) and r.difference == 0.0
    assert r.verdict.startswith("no clear difference on S")


def test_different_prompt_sets_are_one_error_naming_a_few_of_them() -> None:
    a = ["shared", *[f"only a {i}" for i in range(5)]]
    b = ["shared", "only b"]
    with pytest.raises(DifflensError) as exc:
        check_same_prompts(a, b)
    text = str(exc.value)
    assert "5 only in --a ('only a 0', 'only a 1', 'only a 2' and 2 more)" in text
    assert "1 only in --b ('only b')" in text and "Fix:" in text and "\n" not in text
    assert check_same_prompts(["y", "x", "y"], ["x", "y"]) == ["x", "y"]


def test_bad_scores_and_settings_are_refused() -> None:
    with pytest.raises(DifflensError, match="NaN or infinite"):
        paired_comparison("s", "S", [1.0, np.nan], ["a", "b"], [1.0, 2.0], ["a", "b"])
    with pytest.raises(DifflensError, match="--bootstrap must be >= 0"):
        paired_comparison("s", "S", [1.0], ["a"], [1.0], ["a"], bootstrap=-1)
    with pytest.raises(DifflensError, match="2 scores but 1 prompts"):
        paired_comparison("s", "S", [1.0, 2.0], ["a"], [1.0], ["a"])


def test_intervals_cover_the_truth_about_95_percent_of_the_time_when_a_and_b_are_alike() -> None:
    """300 simulated comparisons of two models that are equally good (per-prompt levels shared, independent
    image noise): the 95% intervals should contain 50% (win rate) and 0 (difference) in about 95% of them.
    Measured 0.95 and 0.95 with these seeds; the bounds allow the percentile bootstrap's small-sample
    undercoverage and the binomial noise of 300 trials (sd 1.3 points)."""
    prompts = [f"p{i}" for i in range(60)]
    cover_win = cover_diff = 0
    for s in range(300):
        rng = np.random.default_rng(1000 + s)
        level = rng.normal(0.0, 3.0, 60)
        r = paired_comparison("s", "S", level + rng.normal(0, 1, 60), prompts, level + rng.normal(0, 1, 60),
                              prompts, bootstrap=500, seed=s)
        assert r.win_rate_ci95 is not None and r.difference_ci95 is not None
        cover_win += r.win_rate_ci95[0] <= 0.5 <= r.win_rate_ci95[1]
        cover_diff += r.difference_ci95[0] <= 0.0 <= r.difference_ci95[1]
    assert 0.89 <= cover_win / 300 <= 0.99 and 0.89 <= cover_diff / 300 <= 0.99
