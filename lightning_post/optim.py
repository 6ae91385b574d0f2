"""Optimizers and learning-rate schedules, selected by name from YAML (``model.optim``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class OptimSettings:
    """Optimizer and learning-rate schedule of a module."""

    name: str = "adamw"
    """Optimizer: one of ``OPTIMIZERS`` (adamw, adam, sgd)."""
    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) or L2 penalty (others)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    momentum: float = 0.0
    """SGD momentum."""
    schedule: str = "cosine"
    """Learning-rate schedule after warm-up: one of ``SCHEDULES`` (cosine, linear, constant)."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of ``lr`` (cosine and linear)."""


def _adamw(params, s: OptimSettings):
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)


def _adam(params, s: OptimSettings):
    return torch.optim.Adam(params, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)


def _sgd(params, s: OptimSettings):
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


OPTIMIZERS: dict[str, Callable] = {"adamw": _adamw, "adam": _adam, "sgd": _sgd}


def cosine(progress: float, min_ratio: float) -> float:
    """``min + (1 - min) * (1 + cos(pi * progress)) / 2``: 1 at progress 0, ``min_ratio`` at progress 1."""
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(progress: float, min_ratio: float) -> float:
    """Straight line from 1 at progress 0 to ``min_ratio`` at progress 1."""
    return 1.0 - (1.0 - min_ratio) * progress


def constant(progress: float, min_ratio: float) -> float:
    """Always 1."""
    return 1.0


SCHEDULES: dict[str, Callable[[float, float], float]] = {"cosine": cosine, "linear": linear, "constant": constant}


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based): linear warm-up, then ``schedule``.

    >>> lr_multiplier(0, 2, 10, "cosine", 0.0), lr_multiplier(1, 2, 10, "cosine", 0.0)
    (0.5, 1.0)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return SCHEDULES[schedule](progress, min_ratio)


def check_optim_settings(s: OptimSettings, prefix: str = "model.optim") -> None:
    """Refuse settings that cannot train, naming the setting (called by the module's constructor, before any run;
    torch's own message for a negative rate names no setting)."""
    from lightning_post.errors import ConfigError

    if s.name not in OPTIMIZERS:
        raise ConfigError(f"{prefix}.name", f"unknown optimizer {s.name!r}; choose one of {sorted(OPTIMIZERS)}")
    if s.schedule not in SCHEDULES:
        raise ConfigError(f"{prefix}.schedule", f"unknown schedule {s.schedule!r}; choose one of {sorted(SCHEDULES)}")
    checks = [("lr", s.lr > 0, "> 0"), ("weight_decay", s.weight_decay >= 0, ">= 0"),
              ("eps", s.eps > 0, "> 0"), ("momentum", s.momentum >= 0, ">= 0"),
              ("warmup_steps", s.warmup_steps >= 0, ">= 0"), ("min_lr_ratio", 0 <= s.min_lr_ratio <= 1, "in [0, 1]")]
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{prefix}.{name}", f"must be {rule}, got {getattr(s, name)}")
    if len(s.betas) != 2 or not all(0 <= b < 1 for b in s.betas):
        raise ConfigError(f"{prefix}.betas", f"must be two numbers in [0, 1), got {list(s.betas)}")


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: OptimSettings, total_steps: int):
    """The optimizer and a per-step ``LambdaLR`` for ``settings``."""
    if settings.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={settings.name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={settings.schedule!r} is unknown; choose one of {sorted(SCHEDULES)}")
    optimizer = OPTIMIZERS[settings.name](list(params), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, settings.warmup_steps, total_steps, settings.schedule, settings.min_lr_ratio),
    )
    return optimizer, scheduler
