"""Policy success in the imagined simulator against the physics simulator: does the world model
rate and rank policies as the physics simulator does?

Each policy is run for a number of episodes in both simulators; its success rate in each is
successes / n. Metrics (pure functions, unit-tested against hand-computed values):

- ``wilson_interval``: the Wilson score interval of a binomial proportion (Wilson 1927), the
  uncertainty of one success rate; unlike the normal interval it stays inside [0, 1] and is not
  empty at 0/n or n/n;
- ``pearson``: Pearson correlation of the imagined and physics success rates over policies (does
  the imagined rate move linearly with the real one?);
- ``spearman``: Spearman rank correlation (Pearson correlation of the ranks, tied rates sharing
  their mean rank): do the two simulators order the policies alike?
- ``bootstrap_interval``: a percentile bootstrap interval of such a statistic, resampling policies
  with replacement (Efron & Tibshirani 1993), since a handful of policies makes the correlations
  noisy;
- ``mmrv``: Mean Maximum Rank Violation (SIMPLER, Li et al. 2024): for each policy, the largest
  physics success gap to a policy the imagined simulator orders the other way, averaged over
  policies. 0 when the imagined ranking matches; lower is better; in units of success rate, so a
  swap of two near-equal policies costs little and one of a strong and a weak policy a lot.

- ``agreement``: per episode, over paired starts: how often the imagined outcome is the physics
  one (the four counts) and their phi correlation with a bootstrap interval over episodes.

``PolicyComparison`` gathers the counts of a set of policies and reports all of these as a dict
and a markdown table.

Dimension legend: N policies, B bootstrap resamples.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from torch import Tensor


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the success rate ``successes / n``, at ``confidence``."""
    if n < 1:
        raise ValueError(f"a success rate needs at least one episode, got n = {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n] = [0, {n}], got {successes}")
    z, p = _z(confidence), successes / n
    denominator = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denominator
    half = z / denominator * (p * (1 - p) / n + z**2 / (4 * n**2)) ** 0.5
    # at 0/n and n/n the bound is exactly 0 or 1; rounding would leave it a hair inside and miss a rate of 0 or 1
    return (0.0 if successes == 0 else max(0.0, center - half)), (1.0 if successes == n else min(1.0, center + half))


def _pair(x: Tensor | Sequence[float], y: Tensor | Sequence[float]) -> tuple[Tensor, Tensor]:
    """x and y as (N,) float64 tensors, N >= 3 and the same for both."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        raise ValueError(f"a correlation needs at least 3 pairs, got {len(x)}")
    return x, y


def _constant(v: Tensor) -> bool:
    return bool(v.max() == v.min())


def pearson(x: Tensor | Sequence[float], y: Tensor | Sequence[float]) -> float:
    """Pearson correlation of N >= 3 pairs; nan when x or y is constant (it is undefined then)."""
    x, y = _pair(x, y)
    # torch.corrcoef rather than torchmetrics' pearson_corrcoef: the same value at a sixth of the
    # cost (~0.1 ms against ~0.8 ms a call), which the bootstrap pays thousands of times
    return float("nan") if _constant(x) or _constant(y) else float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def spearman(x: Tensor | Sequence[float], y: Tensor | Sequence[float]) -> float:
    """Spearman correlation of N >= 3 pairs, tied values sharing their mean rank (to ~1e-6:
    torchmetrics ranks in float32); nan when x or y is constant (torchmetrics would give 0, which
    reads as "no order" rather than "undefined")."""
    from torchmetrics.functional.regression import spearman_corrcoef

    x, y = _pair(x, y)
    return float("nan") if _constant(x) or _constant(y) else float(spearman_corrcoef(x, y))


def bootstrap_interval(x: Tensor | Sequence[float], y: Tensor | Sequence[float],
                       statistic: Callable[[Tensor, Tensor], float], samples: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` (e.g. ``pearson``): resamples the N
    pairs with replacement ``samples`` times (the same resamples for a given ``seed``), skips the
    resamples where the statistic is nan (a constant side) and takes the (1 -+ confidence) / 2
    quantiles of the rest; (nan, nan) if every resample is nan."""
    x, y = _pair(x, y)
    _z(confidence)  # validates it
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    index = torch.as_tensor(np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x))))
    values = np.array([statistic(x[i], y[i]) for i in index])  # (B,)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def mmrv(imagined: Tensor | Sequence[float], physics: Tensor | Sequence[float]) -> float:
    """Mean Maximum Rank Violation of N >= 1 policies' imagined success rates s against their
    physics ones r: mean_i max_j |r_i - r_j| * 1[(s_i < s_j) != (r_i < r_j)]."""
    s = torch.as_tensor(imagined, dtype=torch.float64).reshape(-1)
    r = torch.as_tensor(physics, dtype=torch.float64).reshape(-1)
    if len(s) != len(r) or len(s) == 0:
        raise ValueError(f"give as many imagined as physics success rates (at least one), got {len(s)} and {len(r)}")
    violated = (s[:, None] < s[None, :]) != (r[:, None] < r[None, :])  # (N, N)
    return float(((r[:, None] - r[None, :]).abs() * violated).max(dim=1).values.mean())


def agreement(physics: Sequence[bool], imagined: Sequence[bool]) -> dict:
    """How often two runs agree on the same start, episode by episode (physics and imagined, or two
    physics runs): the four outcome counts and their phi (Matthews) correlation with a bootstrap 95%
    interval over episodes (1: one predicts every outcome of the other; 0: it tells nothing about
    which episodes fail; nan where either side never or always succeeds)."""
    p, i = torch.tensor(list(physics), dtype=torch.bool), torch.tensor(list(imagined), dtype=torch.bool)
    if p.shape != i.shape:
        raise ValueError(f"physics and imagined results must be paired, got {len(p)} and {len(i)} episodes")
    counts = {"both": (p & i), "physics_only": (p & ~i), "imagined_only": (~p & i), "neither": (~p & ~i)}
    phi = pearson(p.float(), i.float()) if len(p) >= 3 else float("nan")  # the phi coefficient is Pearson's on 0/1
    ci = bootstrap_interval(p.float(), i.float(), pearson) if len(p) >= 3 else (float("nan"),) * 2
    return {k: int(v.sum()) for k, v in counts.items()} | {"phi": phi, "phi_ci95": list(ci)}


# ---- a set of policies --------------------------------------------------------------------

@dataclass
class PolicyComparison:
    """Success counts of N >= 1 policies in the imagined and the physics simulator. Correlations
    (``summary``, and the last line of ``to_markdown``) need N >= 3."""

    names: list[str]
    imagined_successes: list[int]
    imagined_n: list[int]  # episodes run in the imagined simulator, per policy
    physics_successes: list[int]
    physics_n: list[int]
    confidence: float = 0.95  # of the Wilson and bootstrap intervals
    bootstrap_samples: int = 2000
    seed: int = 0

    def __post_init__(self):
        counts = [self.imagined_successes, self.imagined_n, self.physics_successes, self.physics_n]
        if len(self.names) == 0 or any(len(c) != len(self.names) for c in counts):
            raise ValueError(f"give the same number (at least one) of names, imagined successes and episodes, "
                             f"physics successes and episodes, got {[len(self.names)] + [len(c) for c in counts]}")
        for i, name in enumerate(self.names):
            for successes, n in ((self.imagined_successes[i], self.imagined_n[i]),
                                 (self.physics_successes[i], self.physics_n[i])):
                if n < 1 or not 0 <= successes <= n:
                    raise ValueError(f"policy {name!r}: need n >= 1 and successes in [0, n], got {successes}/{n}")

    @property
    def imagined(self) -> list[float]:
        """The imagined success rates (N,)."""
        return [k / n for k, n in zip(self.imagined_successes, self.imagined_n)]

    @property
    def physics(self) -> list[float]:
        """The physics success rates (N,)."""
        return [k / n for k, n in zip(self.physics_successes, self.physics_n)]

    def summary(self) -> dict:
        """Pearson and Spearman correlations of the success rates with their bootstrap intervals
        (over policies), MMRV, and the mean |imagined - physics| success."""
        s, r = self.imagined, self.physics
        if len(s) < 3:
            raise ValueError(f"correlations need at least 3 policies, got {len(s)}")
        interval = lambda stat: bootstrap_interval(s, r, stat, self.bootstrap_samples,
                                                   self.confidence, self.seed)
        return {"policies": len(s), "pearson": pearson(s, r), "pearson_ci": interval(pearson),
                "spearman": spearman(s, r), "spearman_ci": interval(spearman), "mmrv": mmrv(s, r),
                "mean_abs_gap": float(np.mean(np.abs(np.subtract(s, r))))}

    def to_markdown(self) -> str:
        """A table of the per-policy success rates with their Wilson intervals, then a line with
        the correlations (with N >= 3 policies) and MMRV."""
        level = f"{self.confidence:.0%}"

        def rate(successes: int, n: int) -> str:
            low, high = wilson_interval(successes, n, self.confidence)
            return f"{successes / n:.2f} [{low:.2f}, {high:.2f}] ({successes}/{n})"

        lines = [f"| policy | imagined success [{level} Wilson] | physics success [{level} Wilson] |",
                 "|---|---|---|"]
        for name, ks, ns, kr, nr in zip(self.names, self.imagined_successes, self.imagined_n,
                                        self.physics_successes, self.physics_n):
            lines.append(f"| {name} | {rate(ks, ns)} | {rate(kr, nr)} |")
        if len(self.names) < 3:
            footer = f"MMRV {mmrv(self.imagined, self.physics):.3f} (correlations need at least 3 policies)"
        else:
            m = self.summary()
            ci = lambda key: f"[{m[key][0]:.2f}, {m[key][1]:.2f}]"
            footer = (f"Pearson r {m['pearson']:.2f} {ci('pearson_ci')}, Spearman rho {m['spearman']:.2f} "
                      f"{ci('spearman_ci')}, MMRV {m['mmrv']:.3f}, mean |imagined - physics| {m['mean_abs_gap']:.2f} "
                      f"({len(self.names)} policies, {level} "
                      f"bootstrap intervals over policies)")
        return "\n".join(lines + ["", footer])
