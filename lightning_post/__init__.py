"""lightning-post: post-training foundation models on PyTorch Lightning."""

__version__ = "0.1.0"

from lightning_post.data.cai import CAIDataModule  # noqa: E402
from lightning_post.data.instruction import InstructionDataModule  # noqa: E402
from lightning_post.data.multitask import MultiTaskDataModule  # noqa: E402
from lightning_post.data.preference import PreferenceDataModule  # noqa: E402
from lightning_post.data.prompts import PromptDataModule  # noqa: E402
from lightning_post.data.unpaired import UnpairedDataModule  # noqa: E402
from lightning_post.methods.cai import CAIModule  # noqa: E402
from lightning_post.methods.dpo import DPOModule  # noqa: E402
from lightning_post.methods.kto import KTOModule  # noqa: E402
from lightning_post.methods.ppo import PPOModule  # noqa: E402
from lightning_post.methods.reward import RewardModule  # noqa: E402
from lightning_post.methods.sft import SFTModule  # noqa: E402
from lightning_post.models.peft import PeftSettings  # noqa: E402

__all__ = [
    "CAIDataModule", "CAIModule", "DPOModule", "InstructionDataModule", "KTOModule", "MultiTaskDataModule", "PeftSettings", "PPOModule", "PreferenceDataModule",
    "PromptDataModule", "RewardModule", "SFTModule", "UnpairedDataModule",
    "__version__",
]
