"""PPOModule on the tiny model: a rule-based reward rises for PPO, RLOO and GRPO; resume == continuous; the reward
model path scores exactly as the reward model was trained; the command line and DDP."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_post import PeftSettings, PPOModule, PreferenceDataModule, PromptDataModule, RewardModule
from lightning_post.data.collate import collate_pairs
from lightning_post.records.prompts import normalize_prompt_record
from lightning_post.records.files import DataError
from lightning_post.optim import OptimSettings
from lightning_post.scoring.rewards import RewardModelScorer, token_fraction
from tests.conftest import CONFIGS, write_jsonl
from tests.cli_runner import cli, client

LORA = PeftSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
NEWLINE = 198  # the random tiny model writes it ~7% of the time at temperature 0.1


def ppo(tiny_path, **kw) -> PPOModule:
    """The tiny PPO run of these tests; ``kw`` overrides any of its settings."""
    settings = dict(estimator="gae", samples_per_prompt=4, reward_fn="lightning_post.scoring.rewards:token_fraction",
                    reward_fn_kwargs={"token_ids": [NEWLINE]}, max_new_tokens=8, temperature=0.1, kl_coef=0.01,
                    log_rollouts_every_n_steps=0)
    return PPOModule(tiny_path, optim=OptimSettings(lr=0.003, warmup_steps=0, schedule="constant"), **{**settings, **kw})


def prompts(tiny_path, **kw) -> PromptDataModule:
    return PromptDataModule(tokenizer=tiny_path, batch_size=4, **kw)


class Metrics(L.Callback):
    def __init__(self):
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: v.item() for k, v in trainer.callback_metrics.items()
                          if k.startswith(("objective/", "ppo/", "train/"))})


def fit(module, dm, max_steps, ckpt_path=None, root=None, callbacks=()):
    rec = Metrics()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_checkpointing=bool(callbacks), default_root_dir=root, callbacks=[rec, *callbacks])
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, rec.rows


@pytest.mark.parametrize("estimator, value_model", [("gae", "shared"), ("gae", "separate"), ("rloo", "shared"),
                                                    ("grpo", "shared")])
def test_rule_based_reward_rises(tiny_path, estimator, value_model):
    """Reward = share of newlines in the reply. Before training it is ~0.07; six seeded rollouts of 16 replies take
    it above 0.6 for every estimator (a learning signal from the reward, not just "weights changed")."""
    L.seed_everything(0)
    _, rows = fit(ppo(tiny_path, estimator=estimator, value_model=value_model), prompts(tiny_path), 6)
    scores = [r["objective/scores"] for r in rows]
    assert scores[0] < 0.2, scores
    assert sum(scores[-2:]) / 2 > 0.6, scores
    assert all(0.0 <= r["ppo/clipfrac"] <= 1.0 for r in rows)
    if estimator == "gae":
        assert rows[0]["ppo/values"] == 0.0  # the value head starts at zero
        assert rows[-1]["ppo/values"] != 0.0 and "ppo/value_loss" in rows[-1]
    else:
        assert "ppo/value_loss" not in rows[-1]


def test_resume_equals_continuous(tiny_path, tmp_path):
    """LoRA, two minibatch updates per rollout, adaptive KL: a run stopped after its first rollout (step 2) and
    resumed from that checkpoint samples the same replies and has the same scores, KL coefficient and losses as an
    uninterrupted run. The checkpoint holds the adapters, the value head, the KL coefficient and the random state."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StopAt(L.Callback):  # an interruption: the run is configured for 6 steps
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step == 2

    def run(ckpt_path=None, interrupt=False):
        L.seed_everything(0)
        module = ppo(tiny_path, peft=LORA, num_minibatches=2, target_kl=0.5, kl_horizon=100)
        cbs = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1), StopAt()] \
            if interrupt else []
        return fit(module, prompts(tiny_path), 6, ckpt_path=ckpt_path, callbacks=cbs)[1]

    continuous = run()
    first = run(interrupt=True)
    ckpt = next((tmp_path / "ckpt").glob("*step=2.ckpt"))
    state = torch.load(ckpt, weights_only=False)
    assert state["state_dict"] and all("lora_" in k or k.startswith("value_head") for k in state["state_dict"])
    assert "value_head.weight" in state["state_dict"] and "ppo_kl_coef" in state
    resumed = first + run(ckpt_path=str(ckpt))
    assert len(continuous) == len(resumed) == 3
    for a, b in zip(continuous, resumed):
        for key in ("objective/scores", "objective/kl", "ppo/kl_coef", "train/loss", "ppo/policy_loss",
                    "ppo/value_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert continuous[-1]["ppo/kl_coef"] != 0.01  # the controller moved the coefficient


def test_reward_model_scores_as_it_was_trained(tiny_path, tmp_path):
    """A reward model export scores ``(prompt, reply)`` in PPO exactly as RewardModule scored the same pair's chosen
    reply in training (same template, same tokens, same head position)."""
    rm = RewardModule(tiny_path)
    rm.configure_model()
    with torch.no_grad():
        rm.model.score.weight.normal_(0, 1)
    rm.model.save_pretrained(tmp_path / "rm")
    rm.tokenizer.save_pretrained(tmp_path / "rm")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "How do I boil an egg?", "chosen": "Put it in boiling water for 8 minutes.", "rejected": "No."},
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Name a colour."}], "chosen": "Blue.", "rejected": "Seven."},
    ])
    dm = PreferenceDataModule(train_files=str(pairs), val_files=str(pairs), tokenizer=tiny_path, template="chat")
    dm.prepare_data()
    dm.setup("fit")
    batch = collate_pairs(dm.splits["val"].rows, dm._tokenizer().pad_token_id)
    with torch.no_grad():
        want = rm.rewards(batch)[:2]  # the chosen rows
    records = [normalize_prompt_record(json.loads(line), f"p:{i}") for i, line in
               enumerate(pairs.read_text().splitlines(), 1)]
    scorer = RewardModelScorer(str(tmp_path / "rm"), template="chat")
    got = scorer.score(records, ["Put it in boiling water for 8 minutes.", "Blue."], torch.device("cpu"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got[0] != got[1]


def test_prompt_records_and_errors(tiny_path, tmp_path):
    assert normalize_prompt_record({"messages": [{"role": "user", "content": "a"}, {"role": "assistant",
                                                                                     "content": "b"}]}, "f:1")[
        "prompt"] == [{"role": "user", "content": "a"}]
    assert normalize_prompt_record({"prompt": "x", "chosen": "y", "rejected": "z"}, "f:1")["prompt"] == [
        {"role": "user", "content": "x"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"prompt": ""}])
    dm = PromptDataModule(train_files=str(bad), tokenizer=tiny_path)
    with pytest.raises(DataError, match=rf"{bad}:2: field 'prompt'"):
        dm.prepare_data()
    # left padding: every prompt ends at the last column, where generation starts
    good = prompts(tiny_path, shuffle=False)
    good.prepare_data()
    good.setup("fit")
    batch = good.collate(good.splits["train"].rows[:4])
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].all()
    assert token_fraction([[198, 5, 198, 7]], token_ids=[198]) == [0.5]


def test_ppo_from_the_command_line_logs_objectives_and_rollouts(tmp_path):
    cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), "--trainer.max_steps", "2", "--samples.max_new_tokens",
         "4"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("ppo").experiment_id)[0]
    for key in ("objective/scores", "objective/kl", "objective/entropy", "ppo/clipfrac", "ppo/approx_kl",
                "ppo/value_loss", "ppo/returns", "ppo/advantages", "val/scores", "val/kl"):
        assert key in run.data.metrics, key
    rollouts = [a.path for a in c.list_artifacts(run.info.run_id, "rollouts")]
    assert rollouts == ["rollouts/step000002.json"]
    # held-out answers of the validation at step 2, one row per prompt, with the logged mean score
    answers = [a.path for a in c.list_artifacts(run.info.run_id, "val_answers")]
    assert answers == ["val_answers/step000002.json"]
    table = json.loads(Path(c.download_artifacts(run.info.run_id, answers[0], str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert {"prompt", "prompt_key", "response", "score", "kl", "length"} <= set(rows[0])
    assert len(rows) == len({r["prompt_key"] for r in rows}) > 1
    assert sum(r["score"] for r in rows) / len(rows) == pytest.approx(run.data.metrics["val/scores"], abs=1e-5)
    out = cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), "--model.init_args.estimator", "rloo",
               "--model.init_args.samples_per_prompt", "1"], tmp_path, check=False)
    assert out.returncode != 0 and "samples_per_prompt >= 2" in out.stderr


@pytest.mark.slow  # several processes
def test_ddp_two_processes_run_a_ppo_step(tmp_path):
    """2 CPU processes each roll out their own prompts; gradients are averaged, so both ranks end with the same
    weights (each rank writes a checksum of its parameters)."""
    sums = tmp_path / "sums"
    cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), "--trainer.max_steps", "2", "--trainer.strategy", "ddp",
         "--trainer.devices", "2", "--trainer.limit_val_batches", "0", "--samples.enabled", "false",
         "--trainer.callbacks+", "tests.helpers.ParameterChecksum", "--trainer.callbacks.path", str(sums)], tmp_path)
    values = sorted(sums.glob("rank*.json"))
    assert len(values) == 2
    a, b = (json.loads(p.read_text()) for p in values)
    assert a["step"] == b["step"] == 2 and a["sum"] == pytest.approx(b["sum"], abs=1e-6)
    assert a["sum"] != a["start"]  # the step changed the weights
