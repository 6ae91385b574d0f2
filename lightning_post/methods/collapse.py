"""The collapse guard of on-policy runs: statistics of a rollout's replies (length, EOS rate, distinct-n) and a guard
that warns, or stops the run, when one of them falls below a share of its value at the start.

A policy that games its reward often collapses to one short reply for every prompt (measured before issue 26: every
greedy answer became "I'm sorry for the misunderstanding.", length 55.8 -> 8.0 tokens) or to long repetitions that
never end; both show in these statistics long before a person reads the replies.
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Sequence

from lightning_post.quality.stats import distinct_n

#: the statistics of a rollout's replies, in the order they are logged
STATISTICS = ("length", "eos_rate", "distinct_1", "distinct_2")


def reply_statistics(ids: Sequence[Sequence[int]], texts: Sequence[str], eos_id: int) -> dict[str, float]:
    """``length``: mean reply length in tokens (EOS included); ``eos_rate``: share of replies that ended with EOS
    (before ``max_new_tokens`` cut them); ``distinct_1`` / ``distinct_2``: distinct word uni- / bigrams over all word
    uni- / bigrams of the replies together (lower-cased, split at whitespace; Li et al. 2016).

    >>> reply_statistics([[5, 6, 0], [5, 6, 7, 8]], ["a b", "a b c d"], eos_id=0)
    {'length': 3.5, 'eos_rate': 0.5, 'distinct_1': 0.6666666666666666, 'distinct_2': 0.75}
    """
    if len(ids) != len(texts) or not ids:
        raise ValueError(f"need as many token lists as texts, at least one: got {len(ids)} and {len(texts)}")
    return {"length": sum(map(len, ids)) / len(ids),
            "eos_rate": sum(bool(i) and i[-1] == eos_id for i in ids) / len(ids),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}


class CollapseGuard:
    """Watches the statistics rollout by rollout. Its start is the mean of the first ``window`` rollouts; from the
    ``window``-th rollout on, a statistic has collapsed while the mean of the last ``window`` rollouts is below
    ``share`` x its start (a statistic that starts at 0 cannot collapse). :meth:`update` returns the statistics that
    have just collapsed (each once, until it recovers), as one-line reasons.

    >>> guard = CollapseGuard(share=0.5, window=1, stats=("length",))
    >>> [guard.update({"length": x}) for x in (10.0, 6.0, 4.0, 3.0, 8.0, 4.0)]  # doctest: +NORMALIZE_WHITESPACE
    [[], [], ['length fell to 4, below 0.5 x its start 10 (last 1 rollouts against the first 1)'], [], [],
     ['length fell to 4, below 0.5 x its start 10 (last 1 rollouts against the first 1)']]
    """

    def __init__(self, share: float, window: int = 4, stats: Sequence[str] = STATISTICS):
        unknown = sorted(set(stats) - set(STATISTICS))
        if share <= 0 or window < 1 or unknown or not stats:
            raise ValueError(f"need share > 0, window >= 1 and stats from {list(STATISTICS)}, got {share}, {window}, "
                             f"{list(stats)}")
        self.share, self.window, self.stats = share, window, tuple(stats)
        self.first: list[dict[str, float]] = []
        self.recent: deque = deque(maxlen=window)
        self.collapsed: set[str] = set()

    def _mean(self, rows, stat: str) -> float:
        return sum(r[stat] for r in rows) / len(rows)

    def start(self, stat: str) -> Optional[float]:
        """The start of ``stat`` (``None`` until ``window`` rollouts were seen)."""
        return self._mean(self.first, stat) if len(self.first) == self.window else None

    def update(self, values: dict[str, float]) -> list[str]:
        """Add one rollout's statistics; the reasons of the statistics that collapsed with it."""
        if len(self.first) < self.window:
            self.first.append(dict(values))
        self.recent.append(dict(values))
        if len(self.first) < self.window:
            return []
        reasons = []
        for stat in self.stats:
            start, now = self.start(stat), self._mean(self.recent, stat)
            if start > 0 and now < self.share * start:
                if stat not in self.collapsed:
                    reasons.append(f"{stat} fell to {now:.4g}, below {self.share:g} x its start {start:.4g} (last "
                                   f"{self.window} rollouts against the first {self.window})")
                self.collapsed.add(stat)
            else:
                self.collapsed.discard(stat)
        return reasons

    # ---- checkpoints: a resumed run compares with the start of the run it continues -----------------------------
    def state_dict(self) -> dict:
        return {"first": list(self.first), "recent": list(self.recent), "collapsed": sorted(self.collapsed)}

    def load_state_dict(self, state: dict) -> None:
        self.first = list(state["first"])
        self.recent = deque(state["recent"], maxlen=self.window)
        self.collapsed = set(state["collapsed"])
