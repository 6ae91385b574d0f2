"""The old path of the reward functions and the reward-model scorer, now :mod:`lightning_post.scoring.rewards`:
kept so that YAML written for 0.1 (``reward_fn: lightning_post.rewards:keyword_reward``) still loads."""

from lightning_post.scoring.rewards import RewardModelScorer, keyword_reward, load_function, token_fraction

__all__ = ["RewardModelScorer", "keyword_reward", "load_function", "token_fraction"]
