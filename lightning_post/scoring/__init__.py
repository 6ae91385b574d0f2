"""Scoring: what puts a number on a reply. Reward functions and the reward-model scorer (:mod:`.rewards`), the
judges that compare two answers (:mod:`.judges`: a reward model, an LLM asked a multiple-choice question), and the
rule-based detectors of refusals and personal data (:mod:`.detectors`).

The layer above the records and the models and below the data modules (the training-data safety filter scores with
these), the methods (PPO's rewards) and the commands (evaluation, red teaming, data labelling). Nothing here reads
a data module.
"""
