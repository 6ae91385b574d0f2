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
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
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
