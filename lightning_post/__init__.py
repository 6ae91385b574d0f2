"""lightning-post: post-training foundation models on PyTorch Lightning.

The method and data classes below are imported on first use (``lightning_post.SFTModule``), so that
``lightning-post --help`` and ``--version`` answer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "CAIDataModule": "lightning_post.data.cai",
    "InstructionDataModule": "lightning_post.data.instruction",
    "MultiTaskDataModule": "lightning_post.data.multitask",
    "PreferenceDataModule": "lightning_post.data.preference",
    "PromptDataModule": "lightning_post.data.prompts",
    "UnpairedDataModule": "lightning_post.data.unpaired",
    "CAIModule": "lightning_post.methods.cai",
    "DPOModule": "lightning_post.methods.dpo",
    "KTOModule": "lightning_post.methods.kto",
    "OnlineDPOModule": "lightning_post.methods.online_dpo",
    "PPOModule": "lightning_post.methods.ppo",
    "RewardModule": "lightning_post.methods.reward",
    "SFTModule": "lightning_post.methods.sft",
    "PeftSettings": "lightning_post.models.peft",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'lightning_post' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from lightning_post.data.cai import CAIDataModule
    from lightning_post.data.instruction import InstructionDataModule
    from lightning_post.data.multitask import MultiTaskDataModule
    from lightning_post.data.preference import PreferenceDataModule
    from lightning_post.data.prompts import PromptDataModule
    from lightning_post.data.unpaired import UnpairedDataModule
    from lightning_post.methods.cai import CAIModule
    from lightning_post.methods.dpo import DPOModule
    from lightning_post.methods.kto import KTOModule
    from lightning_post.methods.online_dpo import OnlineDPOModule
    from lightning_post.methods.ppo import PPOModule
    from lightning_post.methods.reward import RewardModule
    from lightning_post.methods.sft import SFTModule
    from lightning_post.models.peft import PeftSettings
