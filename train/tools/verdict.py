"""The statistics behind ``bertsmith compare``: intervals over seeds and verdicts that respect noise.

- Interval: a two-sided 95% Student-t interval for the mean over seeds,
  ``mean ± t(0.975, n-1) · sd / sqrt(n)``; with n = 1 there is no spread and no interval.
- Comparison of two variants: Welch's t-test (two-sided) on their per-seed values, and the
  difference of means with its Welch 95% interval. Welch, not Student: variants need not have
  equal variances (an architecture change can change the seed noise), and at small n the
  t-distribution with Welch–Satterthwaite degrees of freedom keeps the error rate near alpha.
  No paired test: the seeds of two variants are not assumed to match.
- "best" only when the variant with the best mean is distinguishable from the runner-up
  (p < alpha); otherwise the top variants are *tied within noise*, and the seeds per variant
  needed to separate a difference of the observed size at 80% power come from the normal
  approximation ``n = 2 (z(1-alpha/2) + z(power))² s² / d²`` with ``s² = (sd_a² + sd_b²) / 2``.
- One seed on either side: no verdict.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from scipy import stats

ALPHA = 0.05
LEVEL = 0.95
POWER = 0.8
METHOD = (
    "Intervals: 95% t-interval (Student t) of the mean over seeds (mean ± t·sd/√n; none at n=1). "
    "Comparisons: Welch's two-sided t-test (unequal variances, small n; seeds not assumed paired), "
    "the difference of means with its 95% Welch interval; 'best' only when the best mean is "
    f"distinguishable from the runner-up at alpha={ALPHA}, else 'tied within noise' with the seeds "
    f"per variant needed to separate the observed difference at {POWER:.0%} power "
    "(normal approximation)."
)

# a downstream metric of ``bertsmith compare --metric``: finetune:TASK/METRIC
DOWNSTREAM = re.compile(r"^finetune:(?P<task>[^/]+)/(?P<metric>.+)$")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller ``metric`` (a compare metric name) is the better one."""
    m = DOWNSTREAM.match(metric)
    return metric == "val_loss" or (m is not None and m["metric"] in ("mse", "loss"))


@dataclass
class Agg:
    mean: float | None
    sd: float | None
    n: int
    lo: float | None = None
    hi: float | None = None


def aggregate(values: list[float], level: float = LEVEL) -> Agg:
    """Mean, standard deviation, n and the t-interval of the mean (none below n = 2)."""
    n = len(values)
    if n == 0:
        return Agg(None, None, 0)
    mean = statistics.fmean(values)
    if n == 1:
        return Agg(mean, None, 1)
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Agg(mean, sd, n, mean - half, mean + half)


@dataclass
class Comparison:
    diff: float  # mean(a) - mean(b)
    lo: float
    hi: float
    p: float
    df: float


def welch(a: list[float], b: list[float], level: float = LEVEL) -> Comparison | None:
    """Welch's t-test of mean(a) vs mean(b) with the difference's interval; None below n = 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se2 = va + vb
    if se2 == 0:  # no seed noise at all: any difference is exact
        return Comparison(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.inf)
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    se = math.sqrt(se2)
    p = 2 * float(stats.t.sf(abs(diff) / se, df))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Comparison(diff, diff - half, diff + half, float(p), df)


def seeds_needed(a: list[float], b: list[float], alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds per variant to detect |mean(a) - mean(b)| at ``power`` (normal approximation);
    None when the observed difference is zero or a side has fewer than 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = abs(statistics.fmean(a) - statistics.fmean(b))
    s2 = (statistics.variance(a) + statistics.variance(b)) / 2
    if d == 0:
        return None
    if s2 == 0:
        return 2
    z = statistics.NormalDist()
    n = 2 * (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) ** 2 * s2 / d**2
    return max(2, math.ceil(n))


@dataclass
class Verdict:
    status: str  # "best", "tied", "n=1", "single" (one variant), "none" (nothing scored)
    best: str | None  # the variant marked best, only when status is "best" or "single"
    top: str | None  # the best mean, whatever the status
    runner_up: str | None = None
    vs_runner_up: Comparison | None = None
    tied: list[str] | None = None  # variants not distinguishable from the top one
    seeds_needed: int | None = None
    vs_base: dict[str, Comparison | None] | None = None
    base: str | None = None

    def text(self, metric: str) -> str:
        if self.status == "none":
            return f"No variant has {metric} yet: no verdict."
        if self.status == "single":
            return f"One variant ({self.top}): nothing to compare."
        if self.status == "n=1":
            return (
                f"n=1: no verdict. {self.top} has the best mean {metric}, but one seed on a side "
                "gives no estimate of the noise; run more seeds."
            )
        c = self.vs_runner_up
        head = (
            f"{self.top} vs {self.runner_up}: difference {c.diff:+.4f} "
            f"(95% CI {c.lo:+.4f} to {c.hi:+.4f}), Welch p = {c.p:.3g}."
        )
        if self.status == "best":
            return f"**best: {self.best}**, distinguishable from the runner-up at alpha={ALPHA}. {head}"
        need = (
            f" About {self.seeds_needed} seeds per variant would separate a difference of this size "
            f"at {POWER:.0%} power (normal approximation)."
            if self.seeds_needed
            else ""
        )
        return f"**tied within noise**: {', '.join(self.tied)} (alpha={ALPHA}). {head}{need}"


def decide(
    groups: dict[str, list[float]],
    lower_is_better: bool = True,
    base: str | None = None,
    alpha: float = ALPHA,
) -> Verdict:
    """The verdict over variants' per-seed values (variants with no value are left out)."""
    groups = {k: v for k, v in groups.items() if v}
    if base is None or base not in groups:
        base = next(iter(groups), None)
    vs_base = {k: (welch(v, groups[base]) if k != base else None) for k, v in groups.items()}
    if not groups:
        return Verdict("none", None, None, vs_base={}, base=base)
    sign = 1 if lower_is_better else -1
    ranked = sorted(groups, key=lambda k: sign * statistics.fmean(groups[k]))
    top = ranked[0]
    if len(ranked) == 1:
        return Verdict("single", top, top, vs_base=vs_base, base=base)
    second = ranked[1]
    c = welch(groups[top], groups[second])
    if c is None:
        return Verdict("n=1", None, top, second, vs_base=vs_base, base=base)
    if c.p < alpha:
        return Verdict("best", top, top, second, c, [top], vs_base=vs_base, base=base)
    tied = [top] + [k for k in ranked[1:] if (w := welch(groups[k], groups[top])) is None or w.p >= alpha]
    need = seeds_needed(groups[top], groups[second], alpha)
    return Verdict("tied", None, top, second, c, tied, need, vs_base, base)
