"""Success-rate metrics (imagined against physics simulator) against hand-computed values."""

import math

import pytest
import torch

from eval.success import PolicyComparison, bootstrap_interval, mmrv, pearson, spearman, wilson_interval

Z95 = 1.959963984540054  # the 97.5% normal quantile


def test_wilson_interval_matches_the_formula_and_textbook_values():
    # 8/10: p = 0.8, z^2/n = 0.38415, center = (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half = z / 1.38415 * sqrt(0.8 * 0.2 / 10 + z^2 / 400) = 1.41601 * 0.16001 = 0.22658
    p, n = 0.8, 10
    denominator = 1 + Z95**2 / n
    center = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 / denominator * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((center - half, center + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # textbook: not empty at 0/n
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    for n in (20, 40, 100):  # a rate of exactly 0 or 1 lies inside, not a rounding error outside
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(8, 10, confidence=0.99)[0] < low  # wider at a higher confidence
    with pytest.raises(ValueError, match="at least one episode"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"successes must be in \[0, n\]"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match=r"successes must be in \[0, n\]"):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(5, 10, confidence=1.0)


def test_pearson_matches_hand_computation():
    # dx = -1 0 1, dy = -7/3 -1/3 8/3: sum dx dy = 5, sum dx^2 = 2, sum dy^2 = 114/9
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(5 / math.sqrt(2 * 114 / 9), abs=1e-9)
    assert pearson(torch.tensor([0.1, 0.5, 0.9]), [0.3, 0.2, 0.1]) == pytest.approx(-1.0, abs=1e-9)
    assert math.isnan(pearson([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))  # undefined with a constant side


def test_spearman_gives_ties_their_mean_rank():
    # ranks of x: 1 2.5 2.5 4 (dx = -1.5 0 0 1.5); of y: 1 3 2 4 (dy = -1.5 0.5 -0.5 1.5)
    # sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5: rho = 4.5 / sqrt(22.5) = 3 / sqrt(10) = 0.9487
    # (the tie-less shortcut 1 - 6 sum d^2 / (n (n^2 - 1)) would give 0.95; torchmetrics ranks in float32)
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(3 / math.sqrt(10), abs=1e-5)
    assert spearman([0.1, 0.2, 0.9], [1.0, 4.0, 9.0]) == pytest.approx(1.0, abs=1e-5)  # only the order counts
    assert math.isnan(spearman([0.1, 0.2, 0.3], [0.7, 0.7, 0.7]))


def test_correlations_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        pearson([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 3"):
        spearman([0.1, 0.2], [0.3, 0.4])


def test_mmrv_matches_hand_computation():
    physics = [0.9, 0.6, 0.5, 0.1]
    # policies 1 and 2 swapped (0.4 < 0.5 imagined, 0.6 > 0.5 in physics): RV(1, 2) = RV(2, 1) = |0.6 - 0.5|
    # = 0.1, every other pair agrees; MMRV = (0 + 0.1 + 0.1 + 0) / 4 = 0.05
    assert mmrv([0.8, 0.4, 0.5, 0.2], physics) == pytest.approx(0.05)
    # the best and worst swapped: policy 0 violates with 1, 2, 3 (max |0.9 - 0.1| = 0.8), policy 3 likewise
    # (0.8), policy 1 with 0 and 3 (max 0.5), policy 2 with 0 and 3 (max 0.4): (0.8 + 0.5 + 0.4 + 0.8) / 4
    assert mmrv([0.1, 0.4, 0.3, 0.9], physics) == pytest.approx(2.5 / 4)
    assert mmrv([0.45, 0.3, 0.25, 0.05], physics) == 0.0  # same ranking, other rates
    assert mmrv([0.3], [0.7]) == 0.0
    with pytest.raises(ValueError, match="as many"):
        mmrv([0.1, 0.2], [0.1, 0.2, 0.3])


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    x = [0.1, 0.25, 0.3, 0.5, 0.6, 0.8, 0.85, 0.9]
    y = [0.15, 0.2, 0.4, 0.45, 0.7, 0.65, 0.9, 0.8]
    r = pearson(x, y)
    low, high = bootstrap_interval(x, y, pearson, samples=300, seed=3)
    assert low <= r <= high <= 1.0 and low > 0.5
    assert bootstrap_interval(x, y, pearson, samples=300, seed=3) == (low, high)
    assert bootstrap_interval(x, y, pearson, samples=300, seed=4) != (low, high)
    narrow = bootstrap_interval(x, y, pearson, samples=300, confidence=0.5, seed=3)
    assert low <= narrow[0] <= narrow[1] <= high
    # a constant side makes every resample nan
    assert all(math.isnan(v) for v in bootstrap_interval(x, [0.5] * 8, spearman, samples=20))


def comparison(**kw) -> PolicyComparison:
    return PolicyComparison(names=["a", "b", "c", "d"], imagined_successes=[8, 4, 5, 2], imagined_n=[10] * 4,
                            physics_successes=[9, 6, 5, 1], physics_n=[10] * 4, bootstrap_samples=200, **kw)


def test_policy_comparison_summary_and_markdown():
    c = comparison()
    assert c.imagined == pytest.approx([0.8, 0.4, 0.5, 0.2]) and c.physics == pytest.approx([0.9, 0.6, 0.5, 0.1])
    m = c.summary()
    assert m["pearson"] == pytest.approx(pearson(c.imagined, c.physics))
    assert m["spearman"] == pytest.approx(0.8, abs=1e-5)  # ranks 4 2 3 1 against 4 3 2 1: 1 - 6 * 2 / 60
    assert m["mmrv"] == pytest.approx(0.05)  # the hand example above
    assert m["pearson_ci"] == bootstrap_interval(c.imagined, c.physics, pearson, samples=200)
    assert m["spearman_ci"][0] <= m["spearman"] <= m["spearman_ci"][1]
    table = c.to_markdown()
    assert table.splitlines()[0] == "| policy | imagined success [95% Wilson] | physics success [95% Wilson] |"
    assert "| a | 0.80 [0.49, 0.94] (8/10) | 0.90 [0.60, 0.98] (9/10) |" in table
    assert "Spearman rho 0.80" in table and "MMRV 0.050" in table
    assert m["mean_abs_gap"] == pytest.approx(0.1)  # |0.8-0.9|, |0.4-0.6|, 0, |0.2-0.1| -> 0.4 / 4
    assert "mean |imagined - physics| 0.10" in table


def test_policy_comparison_validates_input():
    with pytest.raises(ValueError, match="same number"):
        PolicyComparison(names=["a", "b"], imagined_successes=[1], imagined_n=[2, 2], physics_successes=[1, 1],
                         physics_n=[2, 2])
    with pytest.raises(ValueError, match="same number"):
        PolicyComparison(names=[], imagined_successes=[], imagined_n=[], physics_successes=[], physics_n=[])
    with pytest.raises(ValueError, match="policy 'b'"):
        PolicyComparison(names=["a", "b"], imagined_successes=[1, 1], imagined_n=[2, 0], physics_successes=[1, 1],
                         physics_n=[2, 2])
    two = PolicyComparison(names=["a", "b"], imagined_successes=[1, 2], imagined_n=[2, 2], physics_successes=[0, 2],
                           physics_n=[2, 2])
    assert "correlations need at least 3 policies" in two.to_markdown()
    with pytest.raises(ValueError, match="at least 3 policies"):
        two.summary()


def test_closed_loop_pairs_episodes_and_compares_success_steps():
    """Per policy: the gap, the per-episode agreement, the physics ceiling and the success-step lag
    over the starts that succeed in both, by hand."""
    from eval.closed_loop import closed_loop, closed_loop_markdown
    from eval.policy import EpisodeResults

    def results(success, steps):
        return EpisodeResults(success=success, steps=steps, seconds=0.0)

    imagined = results([True, True, False, True, False], [10, 20, 120, 30, 120])
    imagined.outside_data = [False, True, True, False, False]  # one success, one failure left the data's states
    runs = {"bc": {"imagined": imagined,
                   "physics": results([True, False, False, True, False], [12, 120, 120, 25, 120]),
                   "physics_reseeded": results([True, False, True, True, False], [14, 120, 60, 25, 120])},
            "blind": {"imagined": results([True] * 5, [8] * 5), "physics": results([False] * 5, [120] * 5)}}
    rows = closed_loop(runs)
    bc = rows["bc"]
    assert bc["gap"] == pytest.approx(1 / 5)
    assert (bc["agreement"]["both"], bc["agreement"]["imagined_only"], bc["agreement"]["neither"]) == (2, 1, 2)
    assert bc["agreement"]["phi"] == pytest.approx(pearson([1, 0, 0, 1, 0], [1, 1, 0, 1, 0]))
    assert bc["ceiling"]["phi"] == pytest.approx(pearson([1, 0, 0, 1, 0], [1, 0, 1, 1, 0]))
    assert bc["step_lag"] | {"mean_ci95": None} == {"n": 2, "mean": pytest.approx(1.5), "mean_abs": pytest.approx(3.5),
                                                    "mean_ci95": None}  # -2 and +5
    assert bc["step_lag"]["mean_ci95"][0] == pytest.approx(-2.0) and bc["step_lag"]["mean_ci95"][1] == pytest.approx(5.0)
    assert (bc["ceiling_step_lag"]["n"], bc["ceiling_step_lag"]["mean"]) == (2, pytest.approx(1.0))  # +2 and 0
    assert bc["outside_data"] == {"n": 5, "outside": 2, "succeeded": 1}
    assert rows["blind"]["ceiling"] is None and rows["blind"]["step_lag"]["n"] == 0
    assert rows["blind"]["ceiling_step_lag"] is None
    assert rows["blind"]["outside_data"] is None  # not recorded
    table = closed_loop_markdown(rows)
    assert "| bc | +0.20 |" in table and "+1.5 [-2.0, +5.0] (mean abs 3.5, n=2) | +1.0 [+0.0, +2.0] (mean abs 1.0, n=2) " \
        "| 2 / 5 (1) |" in table
    assert "| blind | +1.00 | n/a (one side constant) | not run | n/a (n=0) | not run | n/a |" in table
