"""Losses as pure functions: tensors in, unreduced tensors out."""

from lightning_post.losses.logps import sum_by_row
from lightning_post.losses.preference import DPO_LOSSES, bradley_terry_loss, implicit_rewards
from lightning_post.losses.sft import token_cross_entropy

__all__ = ["DPO_LOSSES", "bradley_terry_loss", "implicit_rewards", "sum_by_row", "token_cross_entropy"]
