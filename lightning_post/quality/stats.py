"""Pure statistics of preference labels: inter-annotator agreement, position / length / model bias, consistency,
intransitive triples and text diversity. Plain Python lists in, numbers and dicts out; each formula is written in
its docstring and tested against a hand-derived value."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations, permutations
from typing import Hashable, Iterable, Optional, Sequence

from lightning_post.stats import binomial_test, wilson_interval


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators' labels on the same items: ``(p_o - p_e) / (1 - p_e)``, with ``p_o`` the
    observed agreement and ``p_e = sum_k p_1(k) p_2(k)`` the agreement expected from each annotator's marginals.

    >>> round(cohen_kappa("y" * 25 + "n" * 25, "y" * 20 + "n" * 5 + "y" * 10 + "n" * 15), 9)  # p_o .7, p_e .5
    0.4

    Identical constant labels (``p_e = 1``) give 1.0; an empty list raises.
    """
    if len(first) != len(second):
        raise ValueError(f"the annotators labelled {len(first)} and {len(second)} items")
    n = len(first)
    if n == 0:
        raise ValueError("cohen_kappa needs at least one item")
    p_o = sum(a == b for a, b in zip(first, second)) / n
    c1, c2 = Counter(first), Counter(second)
    p_e = sum(c1[k] * c2[k] for k in c1) / (n * n)
    if p_e == 1.0:
        return 1.0
    return (p_o - p_e) / (1 - p_e)


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of an ``items x categories`` table of counts (``table[i][j]`` raters put item ``i`` in category
    ``j``). Items may have different numbers of raters (at least 2 each):

    ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``, ``P_bar = mean_i P_i``,
    ``p_j = sum_i n_ij / sum_i n_i``, ``P_e = sum_j p_j^2``, ``kappa = (P_bar - P_e) / (1 - P_e)``.
    """
    rows = [list(r) for r in table if sum(r) > 0]
    if not rows:
        raise ValueError("fleiss_kappa needs at least one rated item")
    if any(sum(r) < 2 for r in rows):
        raise ValueError("every item needs at least two ratings")
    p_bar = sum((sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows) / len(rows)
    total = sum(sum(r) for r in rows)
    p_e = sum((sum(r[j] for r in rows) / total) ** 2 for j in range(len(rows[0])))
    if p_e == 1.0:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)


def percent_agreement(table: Sequence[Sequence[int]]) -> float:
    """Share of agreeing rater pairs, averaged over items (Fleiss' ``P_bar``): 1 when every item's raters agree."""
    rows = [r for r in table if sum(r) >= 2]
    if not rows:
        raise ValueError("percent_agreement needs items with at least two ratings")
    return sum((sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows) / len(rows)


def cohens_h(p: float, p0: float = 0.5) -> float:
    """Cohen's h, the effect size of a proportion against ``p0``: ``2 asin(sqrt(p)) - 2 asin(sqrt(p0))``
    (0.2 small, 0.5 medium, 0.8 large)."""
    return 2 * math.asin(math.sqrt(p)) - 2 * math.asin(math.sqrt(p0))


def rate_test(k: int, n: int, confidence: float = 0.95) -> dict:
    """A proportion ``k / n`` tested against 1/2: ``{"n", "k", "rate", "ci", "p_value", "effect_h"}``."""
    rate = k / n if n else float("nan")
    return {"n": n, "k": k, "rate": rate, "ci": list(wilson_interval(k, n, confidence)),
            "p_value": binomial_test(k, n), "effect_h": cohens_h(rate) if n else float("nan")}


def position_bias(verdicts: Iterable[str], confidence: float = 0.95) -> dict:
    """How often the first-shown answer wins among decisive verdicts (``A``/``B``; ties left out), tested against 1/2
    with the exact binomial test: an unbiased labeller shows A about half the time when the order is random."""
    decisive = [v for v in verdicts if v in ("A", "B")]
    return rate_test(sum(v == "A" for v in decisive), len(decisive), confidence)


def length_bias(verdicts: Iterable[str], lengths_a: Iterable[float], lengths_b: Iterable[float],
                confidence: float = 0.95) -> dict:
    """How often the longer answer wins among decisive verdicts on answers of different length, tested against 1/2,
    with Cohen's h and the mean ``log(len(winner) / len(loser))`` (0 when length does not matter)."""
    k = n = 0
    log_ratios = []
    for v, la, lb in zip(verdicts, lengths_a, lengths_b):
        if v not in ("A", "B") or la == lb:
            continue
        n += 1
        winner, loser = (la, lb) if v == "A" else (lb, la)
        k += winner > loser
        log_ratios.append(math.log(max(winner, 1) / max(loser, 1)))
    out = rate_test(k, n, confidence)
    out["mean_log_length_ratio"] = sum(log_ratios) / len(log_ratios) if log_ratios else float("nan")
    return out


def win_rates(outcomes: Iterable[tuple[str, str, str]], confidence: float = 0.95) -> dict[str, dict]:
    """Per-model win rate from ``(model_a, model_b, verdict)`` with verdict ``A``/``B``/``Tie``: ``(wins + ties/2) /
    comparisons`` with a Wilson interval (ties counted half)."""
    tally: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])  # wins, losses, ties, n
    for a, b, v in outcomes:
        for model, won in ((a, v == "A"), (b, v == "B")):
            t = tally[model]
            t[3] += 1
            if v == "Tie":
                t[2] += 1
            elif won:
                t[0] += 1
            else:
                t[1] += 1
    out = {}
    for model, (w, l, t, n) in sorted(tally.items()):
        score = w + t / 2
        out[model] = {"wins": int(w), "losses": int(l), "ties": int(t), "n": int(n), "win_rate": score / n,
                      "ci": list(wilson_interval(score, n, confidence))}
    return out


def intransitive_triples(preferences: Iterable[tuple[Hashable, Hashable]]) -> list[tuple]:
    """Cycles ``x > y > z > x`` among ``(winner, loser)`` pairs of one labeller on one prompt; each cycle once, as
    the rotation that starts at its smallest item (items are compared by ``str``).

    >>> intransitive_triples([("a", "b"), ("b", "c"), ("c", "a")])
    [('a', 'b', 'c')]
    """
    beats = {(w, l) for w, l in preferences}
    items = sorted({x for pair in beats for x in pair}, key=str)
    cycles = []
    for trio in combinations(items, 3):
        for x, y, z in permutations(trio):
            if x == trio[0] and (x, y) in beats and (y, z) in beats and (z, x) in beats:
                cycles.append((x, y, z))
    return cycles


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all word n-grams of ``texts`` (lower-cased)."""
    grams: list[tuple] = []
    for t in texts:
        words = t.lower().split()
        grams += [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def label_distribution(verdicts: Iterable[str], categories: Optional[Sequence[str]] = None) -> dict[str, dict]:
    """Counts and shares of each verdict."""
    counts = Counter(verdicts)
    total = sum(counts.values())
    cats = list(categories) if categories else sorted(counts)
    return {c: {"count": counts.get(c, 0), "share": counts.get(c, 0) / total if total else 0.0} for c in cats}
