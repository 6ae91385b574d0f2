"""The limits a preference data set must meet before training: checked by ``lightning-post data report --gate`` and
by ``PreferenceDataModule(quality_gate=...)`` (a dependency-free module, so data modules can name it in their
signature)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class QualityGate:
    """Limits a data set must meet before training (``PreferenceDataModule(quality_gate=...)`` or the report's
    ``--gate``); each limit can be switched off with ``null``."""

    mode: str = "warn"
    """``warn`` logs each finding and trains; ``fail`` stops before anything is written."""
    alpha: float = 0.01
    """A bias counts only when its binomial test rejects 1/2 at this level."""
    max_position_bias: Optional[float] = 0.1
    """Largest allowed ``|rate of choosing A - 1/2|`` (only where the shown order is known)."""
    max_length_bias: Optional[float] = 0.15
    """Largest allowed ``|rate of choosing the longer answer - 1/2|``."""
    max_both_ways_rate: Optional[float] = 0.1
    """Largest share of repeated comparisons labelled both ways."""
    max_intransitive_rate: Optional[float] = 0.05
    """Largest share of checked triples that cycle."""
    max_duplicate_prompt_rate: Optional[float] = 0.2
    """Largest share of prompts that repeat another prompt's text."""
    min_kappa: Optional[float] = 0.2
    """Smallest overall kappa between annotators (when two or more labelled the same comparisons)."""

    def __post_init__(self):
        if self.mode not in ("warn", "fail"):
            raise ValueError(f"quality gate mode must be 'warn' or 'fail', got {self.mode!r}")
