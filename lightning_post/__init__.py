"""lightning-post: post-training foundation models on PyTorch Lightning."""

__version__ = "0.1.0"

from lightning_post.data.instruction import InstructionDataModule  # noqa: E402
from lightning_post.methods.sft import SFTModule  # noqa: E402
from lightning_post.models.peft import PeftSettings  # noqa: E402

__all__ = ["InstructionDataModule", "SFTModule", "PeftSettings", "__version__"]
