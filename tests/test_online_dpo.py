"""OnlineDPOModule: pairs ordered by the judge with ties skipped (hand values), the step's loss against DPO's loss
computed one pair at a time from separate forwards of the policy and the reference, and a tiny run from the command
line that logs its metrics to MLflow and moves the policy; the same with an LLM judge that compares the two replies
(a scripted judge's verdicts, the choice of one judge, a tiny run)."""

from __future__ import annotations

import pytest
import torch

import re

from lightning_post import OnlineDPOModule, PeftSettings, PPOModule, PromptDataModule
from lightning_post.errors import ConfigError
from lightning_post.methods.dpo import combined_preference_loss
from lightning_post.methods.online_dpo import order_pairs, reply_pairs, verdict_order
from lightning_post.methods.rollout import Replies
from lightning_post.records.tokenize import IGNORE_INDEX
from lightning_post.scoring.judges import LLMJudge
from tests.cli_runner import cli, client
from tests.conftest import CONFIGS

LORA = PeftSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def no_reward(completions, **_) -> list[float]:
    """The module's reward function; the tests replace the judge with :class:`StandIn`."""
    return [0.0] * len(completions)


class StandIn:
    """A judge that gives the replies of a step the scores ``values``, in sampling order, and keeps what it saw."""

    def __init__(self, values: list[float]):
        self.values = values

    def __call__(self, records, texts, ids):
        self.records, self.ids = records, ids
        return torch.tensor(self.values)


def online_dpo(tiny_path, scores: list[float], **kw) -> tuple[OnlineDPOModule, StandIn]:
    module = OnlineDPOModule(tiny_path, peft=LORA, reward_fn="tests.test_online_dpo:no_reward", max_new_tokens=6,
                             **kw)
    module.configure_model()
    module.rollouts.score_fn = judge = StandIn(scores)
    return module, judge


def prompt_batch(tiny_path) -> dict:
    """The first four bundled prompts (Korean and English)."""
    dm = PromptDataModule(tokenizer=tiny_path, batch_size=4, shuffle=False)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_pairs_are_ordered_by_score_and_ties_are_skipped():
    """Prompt 0: 0.2 < 0.9, reply b (row 1) is chosen; prompt 1 ties and is skipped; prompt 2: 0.5 > -0.5, reply a."""
    chosen, rejected = order_pairs(torch.tensor([0.2, 0.9, 1.0, 1.0, 0.5, -0.5]))
    assert chosen.tolist() == [1, 4] and rejected.tolist() == [0, 5]
    assert [t.tolist() for t in order_pairs(torch.tensor([1.0, 1.0]))] == [[], []]


def test_pair_rows_are_prompt_then_reply_with_labels_on_the_reply():
    """Two prompts (left-padded, pad 0), two replies each (EOS = 2, padding after it). The pair batch holds
    ``[chosen; rejected]`` rows, right-padded, with labels on the reply tokens, EOS included."""
    prompts = torch.tensor([[0, 11, 12], [0, 11, 12], [13, 14, 15], [13, 14, 15]])
    prompt_mask = (prompts != 0).long()
    response = torch.tensor([[21, 2, 0], [23, 24, 25], [26, 2, 0], [2, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    seq = {"input_ids": torch.cat([prompts, response], 1), "attention_mask": torch.cat([prompt_mask, mask], 1)}
    batch = reply_pairs(Replies(seq, response, mask, [{}] * 4), chosen=[1, 2], rejected=[0, 3], pad_id=0)
    x = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[11, 12, 23, 24, 25], [13, 14, 15, 26, 2], [11, 12, 21, 2, 0],
                                           [13, 14, 15, 2, 0]]
    assert batch["labels"].tolist() == [[x, x, 23, 24, 25], [x, x, x, 26, 2], [x, x, 21, 2, x], [x, x, x, 2, x]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 5, [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert batch["index"].tolist() == [0, 1] and batch["weight"].tolist() == [1.0, 1.0]


def test_a_step_trains_the_better_reply_as_chosen(tiny_path):
    """Sampled replies to four prompts, judged 0.2/0.9, 1/1 (a tie), 0.5/-0.5, 3/1: the pair batch holds replies 1,
    4, 6 as chosen and 0, 5, 7 as rejected (the reply tokens the judge saw), and the judge's statistics count them."""
    torch.manual_seed(0)
    module, judge = online_dpo(tiny_path, [0.2, 0.9, 1.0, 1.0, 0.5, -0.5, 3.0, 1.0])
    pairs, sums = module.judged_pairs(prompt_batch(tiny_path))
    replies = [row[labels != IGNORE_INDEX].tolist() for row, labels in zip(pairs["input_ids"], pairs["labels"])]
    assert replies == [judge.ids[i] for i in (1, 4, 6, 0, 5, 7)]
    assert float(sums["pairs"]) == 3 and float(sums["prompts"]) == 4
    assert float(sums["scores_chosen"]) == pytest.approx(0.9 + 0.5 + 3.0)
    assert float(sums["scores_rejected"]) == pytest.approx(0.2 - 0.5 + 1.0)
    assert float(sums["length_chosen"]) == sum(len(judge.ids[i]) for i in (1, 4, 6))


def test_a_step_of_ties_trains_on_nothing(tiny_path):
    """Every prompt tied: one stand-in pair of weight 0 keeps the step's forward and backward; its loss is 0."""
    torch.manual_seed(0)
    module, _ = online_dpo(tiny_path, [1.0] * 8)
    pairs, sums = module.judged_pairs(prompt_batch(tiny_path))
    assert pairs["weight"].tolist() == [0.0] and float(sums["pairs"]) == 0
    assert float(module.loss_units(pairs)) == 0 and float(module.micro_step(pairs)["loss_sum"].detach()) == 0


def reply_logp(model, prompt: list[int], reply: list[int]) -> torch.Tensor:
    """Summed log-probability of ``reply`` after ``prompt``: one plain forward of one sequence, no padding."""
    ids = torch.tensor([prompt + reply])
    logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # (T-1, V): position t predicts t + 1
    return logps[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None]).sum()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_step_loss_equals_dpo_loss_pair_by_pair(tiny_path, loss_type):
    """The step's loss (micro-batches of two pairs, padding-free attention over the pair batch) equals the mean over
    the judged pairs of ``combined_preference_loss`` on one pair, from separate plain forwards of the policy (LoRA,
    adapters set away from zero) and of the reference (adapters disabled). Tied prompt 1 is left out."""
    torch.manual_seed(0)
    scores = [0.0, 1.0, 2.0, 2.0, 5.0, -1.0, 0.3, 0.7]
    module, judge = online_dpo(tiny_path, scores, loss_type=loss_type, micro_batch_size=2)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    batch = prompt_batch(tiny_path)
    pairs, _ = module.judged_pairs(batch)
    step = sum(module.micro_step(mb)["loss_sum"] for mb in module.micro_batches(pairs)) / module.loss_units(pairs)

    expected = []
    with torch.no_grad():
        for i, (chosen, rejected) in enumerate([(1, 0), (4, 5), (7, 6)]):
            p = [0, 2, 3][i]
            prompt = batch["input_ids"][p][batch["attention_mask"][p].bool()].tolist()
            replies = [judge.ids[chosen], judge.ids[rejected]]
            policy = torch.stack([reply_logp(module.model, prompt, r) for r in replies])
            with module.model.disable_adapter():
                ref = torch.stack([reply_logp(module.model, prompt, r) for r in replies])
            counts = torch.tensor([len(r) for r in replies])
            expected.append(combined_preference_loss([loss_type], [1.0], policy, ref, counts, beta=0.1,
                                                     label_smoothing=0.0))
    assert float(step) == pytest.approx(float(torch.cat(expected).mean()), abs=1e-5)
    if loss_type == "sigmoid":  # the policy is not the reference: not log 2
        assert abs(float(step) - 0.6931) > 1e-3


def test_loss_settings_are_checked_as_dpo_checks_them(tiny_path):
    with pytest.raises(ConfigError, match="simpo_gamma.*not used by loss_type sigmoid"):
        OnlineDPOModule(tiny_path, reward_fn="tests.test_online_dpo:no_reward", simpo_gamma=1.0)
    with pytest.raises(ValueError, match="exactly one of reward_model"):
        OnlineDPOModule(tiny_path)


def test_tiny_run_logs_its_metrics_and_moves_the_policy(tmp_path, tiny_path):
    """configs/online_dpo/tiny.yaml for two steps (validation at step 2): the DPO metrics, the judge's and the
    validation score are in MLflow, and the checkpoint's weights differ from the starting model's."""
    from lightning_post.models.loading import load_causal_lm

    cli(["fit", "--config", str(CONFIGS / "online_dpo/tiny.yaml"), "--trainer.max_steps", "2"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("online_dpo").experiment_id)[0]
    for key in ("train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
                "train/rewards/accuracies", "objective/scores_chosen", "objective/scores_rejected",
                "objective/tie_share", "objective/length_chosen", "objective/length_rejected", "objective/length",
                "val/score"):
        assert key in run.data.metrics, key
    assert 0 <= run.data.metrics["objective/tie_share"] < 1
    assert run.data.metrics["objective/scores_chosen"] > run.data.metrics["objective/scores_rejected"]
    state = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)["state_dict"]
    start = load_causal_lm(tiny_path, "float32", "sdpa").state_dict()
    moved = [k for k, v in start.items() if not torch.equal(state[f"model.{k}"], v)]
    assert len(moved) > len(start) // 2, moved


# ---- the LLM judge --------------------------------------------------------------------------------------------------
class ScriptedJudgeLM:
    """Stands in for the LLM judge's generator (``option_probs``): asked which reply is better, it answers P(A) =
    ``shown_first[i]`` for prompt i when reply a is shown as (A) (the judge's first call) and ``shown_second[i]``
    when reply b is (its second call); it keeps the conversations it was asked."""

    model = torch.nn.Identity()  # the judge's network, moved to the policy's device

    def __init__(self, shown_first: list[float], shown_second: list[float]):
        self.answers, self.asked = [shown_first, shown_second], []

    def option_probs(self, asks, options, prefix="", desc=""):
        assert options == ["A", "B"]
        p = self.answers[len(self.asked)]
        self.asked.append(asks)
        return torch.tensor([[x, 1 - x] for x in p])


def test_verdicts_order_the_pairs_and_ties_are_skipped():
    """A judge's verdicts B, tie, A on prompts 0-2: prompt 0's reply b (row 1) is chosen over a (row 0), prompt 2's
    a (row 4) over b (row 5), prompt 1 is left out."""
    chosen, rejected = order_pairs(verdict_order(["B", "tie", "A"]))
    assert chosen.tolist() == [1, 4] and rejected.tolist() == [0, 5]
    assert [t.tolist() for t in order_pairs(verdict_order(["tie", "tie"]))] == [[], []]


def test_a_step_with_an_llm_judge_trains_its_verdicts(tiny_path):
    """Four prompts, tie band 0.05. The judge gives P(A) with reply a shown first / with b shown first, so
    p_a = (P(A | a first) + P(B | b first)) / 2:
    prompt 0: 0.2, 0.8 -> p_a = (0.2 + 0.2) / 2 = 0.2: B, reply b (row 1) chosen over a (row 0);
    prompt 1: 0.9, 0.9 -> (0.9 + 0.1) / 2 = 0.5: the judge always picks the first shown, a tie, skipped;
    prompt 2: 0.9, 0.3 -> (0.9 + 0.7) / 2 = 0.8: A, row 4 chosen over row 5;
    prompt 3: 0.56, 0.48 -> (0.56 + 0.52) / 2 = 0.54: within 0.05 of 0.5, a tie, skipped.
    The pair batch holds replies 1, 4 as chosen and 0, 5 as rejected; a reply's score is its probability of being the
    better one: chosen 0.8 + 0.8, rejected 0.2 + 0.2."""
    torch.manual_seed(0)
    module = OnlineDPOModule(tiny_path, peft=LORA, llm_judge=tiny_path, llm_judge_tie_band=0.05, max_new_tokens=6)
    module.configure_model()
    gen = ScriptedJudgeLM([0.2, 0.9, 0.9, 0.56], [0.8, 0.9, 0.3, 0.48])
    module._llm_judge = LLMJudge.from_generator(gen, tie_band=0.05)
    sampled = []
    sample = module.rollouts.sample
    module.rollouts.sample = lambda *a, **kw: sampled.append(sample(*a, **kw)) or sampled[-1]
    pairs, sums = module.judged_pairs(prompt_batch(tiny_path))
    ids, texts = module.rollouts.decode(sampled[0])
    assert len(set(texts)) == 8 and all(texts)  # eight different replies: a swap cannot go unseen
    replies = [row[labels != IGNORE_INDEX].tolist() for row, labels in zip(pairs["input_ids"], pairs["labels"])]
    assert replies == [ids[i] for i in (1, 4, 0, 5)]
    # both orders asked: reply a shown as (A) first, then as (B)
    for order, asks in zip([(0, 1), (1, 0)], gen.asked):
        for p, ask in enumerate(asks):
            text = ask[-1]["content"]
            shown = [texts[2 * p + order[0]], texts[2 * p + order[1]]]
            assert text.index(shown[0]) < text.index(shown[1]), (order, p)
    assert float(sums["pairs"]) == 2 and float(sums["prompts"]) == 4
    assert float(sums["scores_chosen"]) == pytest.approx(1.6) and float(sums["scores_rejected"]) == pytest.approx(0.4)
    assert float(sums["scores"]) == pytest.approx(4.0) and float(sums["replies"]) == 8


def test_exactly_one_judge_is_given(tiny_path):
    """Online DPO names its LLM judge among the judges to choose from; PPO's message is unchanged."""
    one_of = ("give exactly one of reward_model (a folder), reward_fn ('package.module:function'), reward_funcs (a list "
              "of reward functions with weights) or llm_judge (a causal LM that compares the two replies)")
    with pytest.raises(ValueError, match=re.escape(one_of)):
        OnlineDPOModule(tiny_path)
    with pytest.raises(ValueError, match=re.escape(one_of)):
        OnlineDPOModule(tiny_path, reward_fn="tests.test_online_dpo:no_reward", llm_judge="tiny-llama")
    with pytest.raises(ValueError, match=re.escape("give exactly one of reward_model (a folder), reward_fn "
                                                   "('package.module:function') or reward_funcs (a list of reward "
                                                   "functions with weights)")):
        PPOModule(tiny_path)
    with pytest.raises(ConfigError, match="model.missing_eos_penalty: must be null with llm_judge"):
        OnlineDPOModule(tiny_path, llm_judge="tiny-llama", missing_eos_penalty=1.0)
    with pytest.raises(ConfigError, match=r"model.llm_judge_tie_band: must be in \[0, 0.5\), got 0.5"):
        OnlineDPOModule(tiny_path, llm_judge="tiny-llama", llm_judge_tie_band=0.5)
    with pytest.raises(ConfigError, match="model.llm_judge: no such folder"):
        OnlineDPOModule(tiny_path, llm_judge="./no/judge")
    OnlineDPOModule(tiny_path, llm_judge="tiny-llama")  # one judge: fine


def test_the_llm_judge_is_frozen_and_not_in_the_checkpoint(tiny_path):
    """The judge's network is in eval mode, needs no gradient, is not among the module's parameters, and adds no
    key to ``state_dict``: the same keys as with a reward function."""
    module = OnlineDPOModule(tiny_path, peft=LORA, llm_judge="tiny-llama")
    module.configure_model()
    judge = module._llm_judge.gen.model
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())
    own = {id(p) for p in module.parameters()}
    assert not any(id(p) in own for p in judge.parameters())
    with_rule, _ = online_dpo(tiny_path, [0.0])
    assert module.state_dict().keys() == with_rule.state_dict().keys()


def test_tiny_run_with_an_llm_judge_logs_its_metrics(tmp_path, tiny_path):
    """configs/online_dpo/tiny_llm_judge.yaml for two steps (validation at step 2): the judge's metrics, the tie
    share and the validation win rate against the reference are in MLflow; the checkpoint holds the policy alone."""
    cli(["fit", "--config", str(CONFIGS / "online_dpo/tiny_llm_judge.yaml"), "--trainer.max_steps", "2"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("online_dpo").experiment_id)[0]
    metrics = run.data.metrics
    for key in ("train/loss", "objective/scores", "objective/scores_chosen", "objective/scores_rejected",
                "objective/tie_share", "objective/length", "val/win_rate", "val/length"):
        assert key in metrics, key
    assert 0 <= metrics["objective/tie_share"] <= 1 and 0 <= metrics["val/win_rate"] <= 1
    assert metrics["objective/scores"] == pytest.approx(0.5)
    if metrics["objective/tie_share"] < 1:  # the chosen reply is the one the judge prefers
        assert metrics["objective/scores_chosen"] > 0.5 > metrics["objective/scores_rejected"]
    state = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)["state_dict"]
    assert all(k.startswith("model.") for k in state), [k for k in state if not k.startswith("model.")][:3]
