"""Prediction-powered success estimates (eval.ppi): valid intervals, narrower only as far as
imagination agrees with the real outcomes."""

import numpy as np
import pytest

from eval.ppi import ppi_success


def draw(rng, n: int, N: int, rate: float, agree: float, bias: float):
    """n paired and N imagined-only outcomes: the real outcome y ~ Bernoulli(rate); the imagined
    one equals it with probability ``agree``, else is a Bernoulli(rate + bias) guess."""
    def imagine(y):
        guess = rng.random(len(y)) < min(1.0, rate + bias)
        return np.where(rng.random(len(y)) < agree, y, guess)
    y, y_only = rng.random(n) < rate, rng.random(N) < rate
    return y, imagine(y), imagine(y_only)


@pytest.mark.parametrize("n,agree,bias", [(40, 0.9, 0.3), (20, 0.7, 0.3), (40, 0.0, 0.3), (40, 0.6, -0.2)])
def test_the_interval_covers_the_real_rate_whatever_the_imagined_bias(n, agree, bias):
    rng, rate, hits = np.random.default_rng(0), 0.55, 0
    for _ in range(2000):
        est = ppi_success(*draw(rng, n, 400, rate, agree, bias))
        hits += est.interval[0] <= rate <= est.interval[1]
    assert hits / 2000 >= (0.93 if n >= 40 else 0.9)


def test_it_narrows_the_interval_only_as_far_as_imagination_agrees():
    rng = np.random.default_rng(1)
    width = lambda i: i[1] - i[0]  # noqa: E731
    faithful = [ppi_success(*draw(rng, 40, 400, 0.5, 0.95, 0.0)) for _ in range(200)]
    blind = [ppi_success(*draw(rng, 40, 400, 0.5, 0.0, 0.3)) for _ in range(200)]
    assert np.mean([width(e.interval) / width(e.real_only_interval) for e in faithful]) < 0.6
    assert np.mean([e.weight for e in faithful]) > 0.8 and np.mean([e.weight for e in blind]) < 0.15
    assert np.mean([width(e.interval) / width(e.real_only_interval) for e in blind]) > 0.9
    # an imagination that is always optimistic moves the estimate nowhere: the paired term removes it
    y, _, _ = draw(rng, 40, 400, 0.3, 0.0, 0.0)
    est = ppi_success(y, np.ones(40, bool), np.ones(400, bool))
    assert est.estimate == pytest.approx(y.mean()) and est.weight == 0.0


def test_no_spread_gives_the_real_only_interval_not_a_point():
    est = ppi_success([True] * 20, [True] * 20, [True] * 5 + [False] * 5)
    assert est.estimate == 1.0 and est.interval == est.real_only_interval and est.interval[0] < 0.9


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="outcomes of the same starts: got 3 and 2"):
        ppi_success([True, False, True], [True, False], [True] * 10)
    with pytest.raises(ValueError, match="at least 20 paired episodes"):
        ppi_success([True, False] * 5, [True, False] * 5, [True] * 10)
