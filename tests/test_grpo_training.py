"""PPOModule with a GRPO-family ``loss_type`` and dynamic sampling on the tiny model: the minibatch loss is the
registered loss of one-reply-at-a-time forwards (Korean prompts included), the first update is on-policy, equal groups
leave the update, a DAPO fit logs TRL's metrics to MLflow, and settings no loss reads are refused."""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from lightning_post.errors import ConfigError
from lightning_post.losses.grpo import GRPO_LOSSES
from lightning_post.losses.rl import rloo_advantages
from lightning_post.methods.ppo import NO_SIGNAL_PATIENCE, informative_groups
from lightning_post.methods.rollout import Rollout
from lightning_post.models.loading import load_causal_lm
from lightning_post.tracking import MLflowLogger
from tests.test_ppo_training import fit, ppo, prompts

PROMPTS = ["Name a colour.", "한국의 수도는 어디인가요?", "Write one short sentence about the sea, please."]


def grpo(tiny_path, **kw):
    """The tiny run with a GRPO-family loss: 2 samples per prompt, no KL reward penalty."""
    return ppo(tiny_path, **{"estimator": "grpo", "samples_per_prompt": 2, "loss_type": "grpo", "kl_coef": 0.0, **kw})


def record_updates(module) -> list[dict]:
    """Each minibatch update's rows and statistics, in order."""
    updates, update = [], module.minibatch_update

    def wrapped(ro, rows):
        stats = update(ro, rows)
        updates.append({"rows": rows.tolist(), **{k: float(v) for k, v in stats.items()}})
        return stats

    module.minibatch_update = wrapped
    return updates


def stand_in_rollout(module, tokenizer) -> Rollout:
    """Two replies to each of three prompts, written by a stand-in ``generate`` (EOS at different places, one reply
    without), with hand advantages and old / reference log-probs set later by the test."""
    eos = tokenizer.eos_token_id
    written = torch.tensor([[101, 102, eos, 7, 7], [201, eos, 7, 7, 7], [301, 302, 303, 304, 305],
                            [401, 402, 403, eos, 7], [eos, 7, 7, 7, 7], [601, 602, 603, 604, eos]])
    batch = {"records": [{"prompt": [{"role": "user", "content": t}]} for t in PROMPTS]}
    ids = [tokenizer.encode(t) for t in PROMPTS]
    width = max(map(len, ids))
    batch["input_ids"] = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids])  # left-padded
    batch["attention_mask"] = (torch.arange(width)[None] >= torch.tensor([width - len(i) for i in ids])[:, None]).long()
    module.model.generate = lambda input_ids, attention_mask, **kw: torch.cat([input_ids, written], 1)
    replies = module.rollouts.sample(batch, 2, do_sample=True)
    zeros = torch.zeros(replies.response.shape)
    return Rollout(replies.seq, replies.response, replies.mask, zeros, zeros, None, zeros, None, torch.zeros(6),
                   zeros, zeros, {}, torch.ones(6, dtype=torch.bool))


def one_reply_logps(plain, ro: Rollout, temperature: float) -> torch.Tensor:
    """``(N, R)`` log-probs of each reply from an eager forward of its prompt and reply alone (0 on padding)."""
    R = ro.response.shape[1]
    P = ro.seq["input_ids"].shape[1] - R
    rows = []
    for i in range(R and ro.response.shape[0]):
        prompt = ro.seq["input_ids"][i, :P][ro.seq["attention_mask"][i, :P].bool()]
        n = int(ro.mask[i].sum())
        logits = plain(input_ids=torch.cat([prompt, ro.response[i, :n]])[None]).logits[0].float() / temperature
        logps = F.log_softmax(logits[len(prompt) - 1:-1], -1).gather(1, ro.response[i, :n, None])[:, 0]  # (n,)
        rows.append(F.pad(logps, (0, R - n)))
    return torch.stack(rows)  # (N, R)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "luspo"])  # each of the four normalisers
def test_minibatch_loss_is_the_registered_loss_of_one_reply_forwards(tiny_path, loss_type):
    """Six replies of 1-5 tokens in three micro-batches of two, rows shuffled; old log-probs off-policy by N(0, 0.3)
    per token (so ratios clip), the reference's by N(0, 0.5), hand advantages, ``beta`` 0.04 (k3 KL in the loss).
    The update's loss and its gradients equal ``GRPO_LOSSES[loss_type]`` of the whole minibatch, fed log-probs from
    one plain forward per reply: each micro-batch weighs by its share of tokens (dapo) or of replies (the others)."""
    torch.manual_seed(0)
    module = grpo(tiny_path, loss_type=loss_type, loss_settings={"beta": 0.04}, micro_batch_size=2, temperature=0.7)
    module.configure_model()
    ro = stand_in_rollout(module, module.tokenizer)
    plain = load_causal_lm(tiny_path, "float32", "eager")
    mask = ro.mask.float()
    logps = one_reply_logps(plain, ro, 0.7)
    old = (logps.detach() + 0.3 * torch.randn_like(logps)) * mask
    ref = (logps.detach() + 0.5 * torch.randn_like(logps)) * mask
    advantages = torch.tensor([1.0, -1.0, 0.5, -1.5, 2.0, -0.5])
    settings = {"beta": 0.04, **({"max_completion_length": 8} if loss_type == "dr_grpo" else {})}
    want = GRPO_LOSSES[loss_type](logps, old, ref, advantages, ro.mask, **settings)
    assert float(want.clip_low + want.clip_high) > 0  # the noise makes ratios clip
    want.loss.backward()
    ro = ro._replace(logps=old, ref_logps=ref, advantages=advantages[:, None] * mask)
    grads = {}

    def optimizer_step(opt, sched):
        grads.update({n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})
        return torch.tensor(0.0)

    module.optimizers = module.lr_schedulers = lambda: None
    module.optimizer_step, module.manual_backward = optimizer_step, lambda loss: loss.backward()
    module._sync_context = lambda last: contextlib.nullcontext()
    stats = module.minibatch_update(ro, torch.tensor([4, 1, 5, 0, 3, 2]))
    torch.testing.assert_close(stats["loss"], want.loss.detach(), atol=2e-5, rtol=1e-4)
    expected = dict(plain.named_parameters())
    assert grads.keys() == {n for n, p in expected.items() if p.grad is not None}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name].grad, atol=2e-5, rtol=2e-3, msg=name)


def test_first_update_is_on_policy_and_the_second_is_not(tiny_path):
    """The old log-probs are the policy's at sampling time: on the first update of a rollout every ratio is 1 (mean
    weight 1, nothing clipped); after it the policy has moved, so the second epoch's ratios are not 1."""
    L.seed_everything(0)
    module = grpo(tiny_path, samples_per_prompt=4, ppo_epochs=2, loss_settings={"epsilon_low": 0.01,
                                                                                 "epsilon_high": 0.01})
    updates = record_updates(module)
    _, rows = fit(module, prompts(tiny_path), 2)
    first, second = updates
    assert first["train/clip_ratio/low"] == first["train/clip_ratio/high"] == 0.0
    assert first["ppo/loss_weight"] == pytest.approx(1.0, abs=1e-5)
    assert abs(second["ppo/loss_weight"] - 1.0) > 1e-4
    assert second["train/clip_ratio/low"] + second["train/clip_ratio/high"] > 0  # an epsilon of 0.01 clips
    assert rows[0]["train/clip_ratio/high"] == pytest.approx((first["train/clip_ratio/high"]
                                                              + second["train/clip_ratio/high"]) / 2)


def test_informative_groups_by_hand():
    """Groups of 2: (1, 1) equal, (0, 1) not, (0.5, 0.5) equal, (2, 2) equal."""
    kept = informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0, 2.0]), 2)
    assert kept.tolist() == [False, False, True, True, False, False, False, False]


def test_dynamic_sampling_trains_on_the_groups_that_differ(tiny_path):
    """Four prompts x 2 replies scored (1, 1), (0, 1), (0.5, 0.5), (3, 3): only rows 2 and 3 are trained on, their
    advantages are (0 - 0.5, 1 - 0.5) / (std + 1e-4) with std = sqrt(0.5) the std of the kept scores (``batch``
    scaling over the kept groups alone; over all eight it would be sqrt(9 / 7) = 1.134), the others' advantages are
    0, and ``train/groups/dropped_share`` is 3/4."""
    L.seed_everything(0)
    module = grpo(tiny_path, drop_equal_groups=True, scale_rewards="batch")
    module.rollouts.score_fn = lambda records, texts, ids: torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 3.0, 3.0])
    rollouts, rollout = [], module.rollout
    module.rollout = lambda batch: rollouts.append(rollout(batch)) or rollouts[-1]
    updates = record_updates(module)
    _, rows = fit(module, prompts(tiny_path), 1)
    assert [sorted(u["rows"]) for u in updates] == [[2, 3]]
    a = 0.5 / (0.5 ** 0.5 + 1e-4)
    advantages = rollouts[0].advantages[:, 0]
    torch.testing.assert_close(advantages, torch.tensor([0, 0, -a, a, 0, 0, 0, 0]), atol=1e-6, rtol=0)
    assert rows[0]["train/groups/dropped_share"] == 0.75


def test_a_rollout_of_equal_groups_makes_no_update(tiny_path, caplog):
    """Every score equal: no update, no crash, dropped share 1 and a warning each rollout; after
    ``NO_SIGNAL_PATIENCE`` such rollouts the run stops (no trainer step was made)."""
    module = grpo(tiny_path, drop_equal_groups=True, max_new_tokens=2)
    module.rollouts.score_fn = lambda records, texts, ids: torch.ones(len(texts))
    updates = record_updates(module)
    with caplog.at_level(logging.WARNING, logger="lightning_post.methods.ppo"):
        trainer, rows = fit(module, prompts(tiny_path), 1)
    assert updates == [] and trainer.global_step == 0
    assert len(rows) == NO_SIGNAL_PATIENCE and all(r["train/groups/dropped_share"] == 1.0 for r in rows)
    assert "train/loss" not in rows[-1]
    assert sum("every group's rewards were equal" in r.message for r in caplog.records) == NO_SIGNAL_PATIENCE
    assert "stopping the run" in caplog.records[-1].message


def test_dapo_fit_logs_trl_metrics_to_mlflow_and_moves_the_policy(tiny_path, tmp_path):
    """DAPO (clip-higher 0.28) with a k3 KL in the loss (beta 0.04): two rollouts train, every parameter tensor moves,
    and MLflow holds the clip ratios, the in-loss KL (>= 0: k3) and the loss of each step."""
    L.seed_everything(0)
    module = grpo(tiny_path, samples_per_prompt=4, loss_type="dapo", loss_settings={"epsilon_high": 0.28,
                                                                                     "beta": 0.04})
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    logger = MLflowLogger(experiment_name="grpo", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                          artifact_location=str(tmp_path / "artifacts"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=logger, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_checkpointing=False)
    trainer.fit(module, prompts(tiny_path))
    moved = [n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    history = {key: [m.value for m in client.get_metric_history(logger.run_id, key)]
               for key in ("train/clip_ratio/low", "train/clip_ratio/high", "train/kl", "train/loss")}
    assert all(len(values) == 2 for values in history.values()), history
    assert all(0.0 <= v <= 1.0 for v in history["train/clip_ratio/low"] + history["train/clip_ratio/high"])
    assert history["train/kl"][0] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert history["train/kl"][1] > 0


def test_rloo_with_a_loss_type_keeps_its_leave_one_out_baseline(tiny_path):
    """``k / (k - 1) (s - mean)`` is ``s`` minus the mean of the other ``k - 1``: with ``scale_rewards: none`` the
    advantages are RLOO's own."""
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0, 3.0, 3.0, 0.0, 1.0])
    module = grpo(tiny_path, estimator="rloo", samples_per_prompt=4, loss_type="bnpo", scale_rewards="none")
    torch.testing.assert_close(module.sequence_advantages(scores), rloo_advantages(scores, 4))


@pytest.mark.parametrize("kw, setting, problem", [
    ({"loss_settings": {"epsilon": 0.2}}, "model.loss_settings.epsilon", "not a setting of loss_type grpo; it reads"),
    ({"loss_type": "dapo", "loss_settings": {"sapo_temperature_pos": 1.0}}, "model.loss_settings.sapo_temperature_pos",
     "(a setting of sapo)"),
    ({"kl_coef": 0.05, "loss_settings": {"beta": 0.04}}, "model.kl_coef",
     "0.05 puts the KL in the reward and loss_settings.beta = 0.04 puts it in the loss"),
    ({"loss_settings": {"beta": 0.04}, "target_kl": 0.1}, "model.target_kl", "set target_kl: null"),
    ({"estimator": "gae"}, "model.loss_type", "grpo needs group advantages: estimator rloo or grpo, got gae"),
    ({"loss_type": "ppo2"}, "model.loss_type", "'ppo2' is unknown"),
    ({"loss_settings": {"importance_sampling_level": "reply"}}, "model.loss_settings",
     "importance_sampling_level must be one of"),
    ({"loss_settings": {"beta": -0.1}}, "model.loss_settings.beta", "must be >= 0"),
    ({"cliprange": 0.3}, "model.cliprange", "loss_settings.epsilon_low / epsilon_high"),
    ({"loss_type": None, "scale_rewards": "none"}, "model.scale_rewards", "read only with a loss_type"),
    ({"loss_type": None, "loss_settings": {"beta": 0.1}}, "model.loss_settings", "read only with a loss_type"),
    ({"scale_rewards": "prompt"}, "model.scale_rewards", "must be group or batch or none"),
    ({"estimator": "gae", "loss_type": None, "drop_equal_groups": True}, "model.drop_equal_groups",
     "needs estimator rloo or grpo"),
])
def test_settings_no_loss_reads_are_refused(tiny_path, kw, setting, problem):
    with pytest.raises(ConfigError) as info:
        grpo(tiny_path, **kw)
    assert info.value.setting == setting and problem in info.value.problem, str(info.value)


def test_a_lean_rollout_trains_exactly_as_a_tracked_one(tiny_path):
    """``track_kl: false`` with one on-policy update per rollout skips the sampling-time and reference forwards: the
    update's own log-probs, detached, are the old ones. Two DAPO steps from the same seed then make the same losses,
    the same entropy and the same adapter weights as with both forwards; only ``objective/kl`` is no longer logged.
    With two epochs, a KL penalty or a critic the rollout keeps its forwards."""
    runs = {}
    for track in (True, False):
        L.seed_everything(0)
        start = load_causal_lm(tiny_path, "float32", "eager").state_dict()
        module = grpo(tiny_path, loss_type="dapo", samples_per_prompt=4, track_kl=track)
        _, rows = fit(module, prompts(tiny_path), 2)
        runs[track] = (module, rows)
        assert any(not torch.equal(p, start[n]) for n, p in module.model.named_parameters() if n in start), "no move"
    (tracked, rows_t), (lean, rows_l) = runs[True], runs[False]
    assert not tracked.lean_rollout and lean.lean_rollout
    assert "objective/kl" in rows_t[-1] and "objective/kl" not in rows_l[-1]
    for a, b in zip(rows_t, rows_l):
        for key in ("train/loss", "objective/entropy", "objective/scores", "ppo/loss_weight"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(tracked.model.named_parameters(), lean.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=name)
    for kw in ({"ppo_epochs": 2}, {"kl_coef": 0.01}, {"loss_settings": {"beta": 0.04}}):
        assert not grpo(tiny_path, track_kl=False, **kw).lean_rollout, kw
    assert not ppo(tiny_path, track_kl=False, kl_coef=0.0).lean_rollout  # GAE: the critic's values need the forward
