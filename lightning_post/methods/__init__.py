"""One LightningModule per post-training method."""

from lightning_post.methods.sft import SFTModule

__all__ = ["SFTModule"]
