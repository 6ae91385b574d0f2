"""One LightningModule per post-training method."""

from lightning_post.methods.dpo import DPOModule
from lightning_post.methods.kto import KTOModule
from lightning_post.methods.reward import RewardModule
from lightning_post.methods.sft import SFTModule

__all__ = ["DPOModule", "KTOModule", "RewardModule", "SFTModule"]
