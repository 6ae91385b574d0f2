"""Small exact statistics shared by the benchmarks, data-quality reports and A/B tests (no SciPy needed)."""

from __future__ import annotations

import math


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test: the probability, under ``Binomial(n, p)``, of an outcome no more likely than
    ``k`` successes (the rule of R's ``binom.test`` and SciPy's ``binomtest``).

    >>> round(binomial_test(9, 10), 6)  # (1 + 10 + 10 + 1) / 2**10
    0.021484
    >>> binomial_test(0, 0)
    1.0
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if n == 0:
        return 1.0
    if p in (0.0, 1.0):
        return 1.0 if k == round(p * n) else 0.0
    # in log space: math.comb(n, i) overflows a float beyond n ~ 1000
    log_pmf = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
               + (n - i) * math.log1p(-p) for i in range(n + 1)]
    pmf = [math.exp(x) for x in log_pmf]
    limit = pmf[k] * (1 + 1e-7)  # outcomes as likely as k count too, despite rounding
    return min(1.0, sum(q for q in pmf if q <= limit))


def sign_test(differences) -> tuple[int, int, float]:
    """``(higher, lower, p)``: paired differences above and below zero (ties dropped) and the two-sided binomial test
    of ``higher`` against ``higher + lower`` at 1/2."""
    higher = sum(1 for d in differences if d > 0)
    lower = sum(1 for d in differences if d < 0)
    return higher, lower, binomial_test(higher, higher + lower)


def mean_and_se(values) -> tuple[float, float]:
    """Sample mean and its standard error (sample standard deviation over ``sqrt(n)``; 0 for fewer than 2 values)."""
    values = list(values)
    if not values:
        raise ValueError("mean_and_se needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF (``statistics.NormalDist``), e.g. 1.95996 for 0.975."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def wilson_interval(k: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``k`` may be fractional, e.g. ties counted half).

    >>> [round(x, 4) for x in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if n <= 0:
        return 0.0, 1.0
    z = normal_quantile(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values, statistic=None, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over ``values``, seeded."""
    import random

    values = list(values)
    if not values:
        raise ValueError("bootstrap_interval needs at least one value")
    statistic = statistic or (lambda xs: sum(xs) / len(xs))
    rng = random.Random(seed)
    stats = sorted(statistic([values[rng.randrange(len(values))] for _ in values]) for _ in range(resamples))
    lo = stats[int(math.floor((1 - confidence) / 2 * (resamples - 1)))]
    hi = stats[int(math.ceil((1 + confidence) / 2 * (resamples - 1)))]
    return lo, hi


def sign_test_sample_size(win_rate: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Decisive (non-tied) comparisons needed for a two-sided sign test at level ``alpha`` to detect a true win rate
    ``win_rate`` with probability ``power`` (normal approximation):
    ``n = ((z_{1-alpha/2} * 0.5 + z_{power} * sqrt(p (1 - p))) / (p - 0.5))^2``.

    >>> sign_test_sample_size(0.6)
    194
    """
    if not 0 < win_rate < 1 or win_rate == 0.5:
        raise ValueError(f"win_rate must lie in (0, 1) and differ from 0.5, got {win_rate}")
    za, zb = normal_quantile(1 - alpha / 2), normal_quantile(power)
    n = ((za * 0.5 + zb * math.sqrt(win_rate * (1 - win_rate))) / (win_rate - 0.5)) ** 2
    return math.ceil(n)
