"""Losses as pure functions: tensors in, unreduced tensors out."""

from lightning_post.losses.sft import token_cross_entropy

__all__ = ["token_cross_entropy"]
