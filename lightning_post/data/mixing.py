"""Task mixing for multitask training: sampling rates (fixed weights, examples-proportional with T5's cap K,
temperature) and the seeded, resumable order of examples under the ``mixed``, ``curriculum`` and ``alternating``
strategies. Pure functions of sizes, settings and a seed, so a resumed run recomputes exactly the same draws."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

from lightning_post.errors import UserError

MIXINGS = ("weights", "proportional", "temperature")
STRATEGIES = ("mixed", "curriculum", "alternating")


def mixing_rates(sizes: Sequence[int], weights: Optional[Sequence[float]] = None, mixing: str = "temperature",
                 temperature: float = 1.0, cap: Optional[int] = None) -> list[float]:
    """Probability of drawing each task: ``p_i ∝ w_i * r_i`` with

    * ``weights``: ``r_i = 1`` (the weights alone);
    * ``proportional``: ``r_i = min(n_i, K)`` (Raffel et al. 2020, examples-proportional mixing with limit K);
    * ``temperature``: ``r_i = min(n_i, K) ** (1 / T)`` (T = 1 is proportional, T -> inf uniform).

    ``K`` is ``cap`` (``None`` = no cap); ``w`` defaults to 1 for every task.

    >>> mixing_rates([100, 400], mixing="temperature", temperature=2.0)  # sqrt: 10 : 20
    [0.3333333333333333, 0.6666666666666666]
    >>> mixing_rates([100, 400], mixing="proportional", cap=200)
    [0.3333333333333333, 0.6666666666666666]
    """
    if mixing not in MIXINGS:
        raise UserError(f"mixing must be one of {list(MIXINGS)}, got {mixing!r}")
    if not sizes:
        raise UserError("mixing_rates needs at least one task")
    weights = list(weights) if weights is not None else [1.0] * len(sizes)
    if len(weights) != len(sizes) or any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise UserError(f"need one non-negative weight per task, not all zero; got {weights}")
    if mixing == "temperature" and temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    capped = [min(n, cap) if cap is not None else n for n in sizes]
    if mixing == "weights":
        raw = [float(w) for w in weights]
    elif mixing == "proportional":
        raw = [w * n for w, n in zip(weights, capped)]
    else:
        raw = [w * n ** (1.0 / temperature) if n > 0 else 0.0 for w, n in zip(weights, capped)]
    total = sum(raw)
    if total <= 0:
        raise UserError("every task with a positive weight is empty")
    return [r / total for r in raw]


@dataclass
class CurriculumStage:
    """One stage of a curriculum: ``batches`` optimizer batches drawn with these task ``weights`` (task name ->
    weight; tasks left out are not drawn in this stage)."""

    batches: int
    weights: dict[str, float] = field(default_factory=dict)


def _draw(rng: random.Random, rates: Sequence[float]) -> int:
    return rng.choices(range(len(rates)), weights=rates)[0]


class TaskOrder:
    """The sequence of ``(task, example)`` draws, batch by batch, deterministic in ``seed``.

    Each task walks through its own shuffled permutation and reshuffles when it is used up, so every example of a
    task is seen once before any is seen twice. ``mixed`` draws the task of every example from ``rates``;
    ``alternating`` gives whole batches to one task, the tasks in turn (tasks with rate 0 skipped); ``curriculum``
    draws like ``mixed`` with each stage's rates for its number of batches, the last stage continuing to the end.
    """

    def __init__(self, sizes: Sequence[int], rates: Sequence[float], batch_size: int, seed: int,
                 strategy: str = "mixed", stages: Optional[Sequence[Sequence[float]]] = None,
                 stage_batches: Optional[Sequence[int]] = None):
        if strategy not in STRATEGIES:
            raise UserError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if strategy == "curriculum" and not stages:
            raise UserError("strategy 'curriculum' needs stages")
        self.sizes, self.rates, self.batch_size, self.seed = list(sizes), list(rates), batch_size, seed
        self.strategy, self.stages, self.stage_batches = strategy, stages, stage_batches

    def batches(self, count: int, epoch: int = 0) -> list[list[tuple[int, int]]]:
        """The first ``count`` batches of ``epoch``: lists of ``(task index, example index in the task)``."""
        rng = random.Random(f"{self.seed}:{epoch}")
        perms: list[list[int]] = [[] for _ in self.sizes]
        used = [0] * len(self.sizes)

        def next_example(t: int) -> int:
            if used[t] == len(perms[t]):
                perms[t] = list(range(self.sizes[t]))
                rng.shuffle(perms[t])
                used[t] = 0
            used[t] += 1
            return perms[t][used[t] - 1]

        active = [t for t, r in enumerate(self.rates) if r > 0]
        out = []
        for b in range(count):
            if self.strategy == "alternating":
                t = active[b % len(active)]
                out.append([(t, next_example(t)) for _ in range(self.batch_size)])
                continue
            rates = self.rates if self.strategy == "mixed" else self._stage_rates(b)
            batch = []
            for _ in range(self.batch_size):
                t = _draw(rng, rates)
                batch.append((t, next_example(t)))
            out.append(batch)
        return out

    def _stage_rates(self, batch: int) -> Sequence[float]:
        end = 0
        for rates, n in zip(self.stages, self.stage_batches):
            end += n
            if batch < end:
                return rates
        return self.stages[-1]


def expected_share(rates: Sequence[float], draws: int) -> list[tuple[float, float]]:
    """Mean and standard deviation of each task's share of ``draws`` independent draws (binomial): used to state
    "within sampling error"."""
    return [(p, math.sqrt(p * (1 - p) / draws)) for p in rates]
