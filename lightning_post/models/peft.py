"""Parameter-efficient fine-tuning: the ``peft:`` block of a module's YAML.

No block means full fine-tuning. A block selects a registered method (``lora``) and its settings::

    model:
      peft:
        method: lora
        r: 16
        alpha: 32
        dropout: 0.05
        target_modules: all-linear
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import torch


@dataclass
class PeftSettings:
    """Settings of a parameter-efficient method applied to the policy model."""

    method: str = "lora"
    """Registered method name (see ``PEFT_METHODS``)."""
    r: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is scaled by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: Union[str, list[str]] = "all-linear"
    """Module names to adapt (``q_proj``, ``v_proj``, ...) or ``all-linear`` (every linear layer but the LM head)."""
    bias: str = "none"
    """Which biases train: ``none``, ``all`` or ``lora_only``."""
    extra: dict = field(default_factory=dict)
    """Further keyword arguments passed to the PEFT config class unchanged."""


def _lora(model: torch.nn.Module, s: PeftSettings, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=s.target_modules,
        bias=s.bias,
        task_type=task_type,
        **s.extra,
    )
    return get_peft_model(model, config)


#: method name -> function(model, settings) returning the wrapped model.
PEFT_METHODS: dict[str, Callable] = {"lora": _lora}


def apply_peft(model: torch.nn.Module, settings: PeftSettings | None, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with the configured PEFT method; ``None`` returns it unchanged (full fine-tuning).

    ``task_type`` is PEFT's: ``CAUSAL_LM``, or ``SEQ_CLS`` for reward models (PEFT then trains the new ``score``
    head in full beside the adapters)."""
    if settings is None:
        return model
    try:
        build = PEFT_METHODS[settings.method]
    except KeyError:
        raise ValueError(f"peft.method={settings.method!r} is unknown; choose one of {sorted(PEFT_METHODS)}") from None
    return build(model, settings, task_type)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts (tied weights counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
