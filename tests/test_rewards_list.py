"""The weighted list of reward functions (``reward_funcs``): the built-ins on hand values (Korean included), the
weighted sum, the checks of an entry, the run-stopping errors of a bad function, and each function's mean logged on
its own by a tiny PPO run (checked against the replies it logged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_post.errors import ConfigError, UserError
from lightning_post.scoring.rewards import (
    REWARD_FUNCTIONS,
    RewardError,
    RewardFunc,
    WeightedRewards,
    exact_answer,
    format_reward,
    length_penalty,
)
from tests.cli_runner import cli, client
from tests.conftest import CONFIGS

CPU = torch.device("cpu")


def record(answer: str, prompt: str = "What is 17 + 25?") -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "raw_prompt": f"\n\nHuman: {prompt}\n\nAssistant:",
            "answer": answer}


# ---- test functions named by path in the runs below ---------------------------------------------------------------
def three_values(completions, **_):
    return [1.0, 0.0, 1.0]


def broken(completions, **_):
    raise KeyError("score")


def vowel_share(completions, **_):
    return [sum(ch in "aeiou" for ch in c) / max(1, len(c)) for c in completions]


# ---- the built-ins on hand values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, reward", [
    ("42", 1.0), ("42.0", 1.0), ("**42**", 1.0), ("The answer is 42.", 1.0), ("42 apples", 1.0),
    ("정답은 42입니다", 1.0), ("답: 42", 1.0), ("17 + 25 = 42", 1.0), ("The answer is 42, not 41.", 1.0),
    ("The answer is 41, not 42.", 0.0),  # the stated answer counts, not the last number
    ("41", 0.0), ("-42", 0.0), ("1,042", 0.0), ("4.2", 0.0), ("forty-two", 0.0), ("", 0.0),
    ("정답은 41입니다. 42가 아닙니다.", 0.0),
    ("Answer: 41. Checking again: the answer is 42.", 1.0),  # the last marker decides
    ("The answer is 42. Answer: 41", 0.0),
])
def test_exact_answer_of_a_number(reply, reward):
    assert exact_answer([reply], [record("42")]) == [reward]


def test_exact_answer_of_other_numbers_and_short_answers():
    """Negative, comma-grouped and decimal references compare as numbers; a text reference compares without
    markup, case, surrounding punctuation, a leading article or a Korean copula."""
    replies = ["The answer is -5.", "5-3", "It costs 1,000 won.", "2.50", "**Paris.**", "The answer is paris",
               "The capital is Paris", "정답은 서울입니다.", "서울이에요", "부산"]
    answers = ["-5", "3", "1000", "2.5", "Paris", "Paris", "Paris", "서울", "서울", "서울"]
    assert exact_answer(replies, [record(a) for a in answers]) == [1, 1, 1, 1, 1, 1, 0, 1, 1, 0]


def test_exact_answer_needs_the_reference():
    with pytest.raises(ValueError, match="reply 0 has no 'answer'"):
        exact_answer(["42"], [{"prompt": [{"role": "user", "content": "?"}]}])


def test_format_and_length_penalty_by_hand():
    pattern = r"^.*The answer is -?\d+"
    assert format_reward(["Let me think.\nThe answer is -3.", "The answer: 3", "정답은 3입니다"], pattern=pattern) == \
        [1.0, 0.0, 0.0]
    assert format_reward(["정답은 3입니다", "3"], pattern=r"정답은 \d+") == [1.0, 0.0]
    # max_length 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 from 10 on
    assert length_penalty([[1] * n for n in (0, 6, 7, 9, 10, 30)], max_length=10, buffer=4) == \
        [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    assert length_penalty([[1] * 10, [1] * 11], max_length=10) == [0.0, -1.0]  # no buffer: a hard limit


def test_the_weighted_sum_and_its_parts():
    """Replies "The answer is 42." (right), "41" (wrong) and "정답은 42입니다" (right) of 2, 5 and 3 tokens: exact
    1, 0, 1; format (the English sentence) 1, 0, 0; length penalty (max 4, buffer 2: free up to 2 tokens) 0, -1,
    -0.5. Total = 1.0 x exact + 0.2 x format + 0.5 x length = 1.2, -0.5, 0.75."""
    rewards = WeightedRewards([
        {"name": "exact_answer"},
        RewardFunc("format", 0.2, {"pattern": r"The answer is \d+"}),
        {"name": "length_penalty", "weight": 0.5, "kwargs": {"max_length": 4, "buffer": 2}, "label": "length"},
    ])
    replies = ["The answer is 42.", "41", "정답은 42입니다"]
    out = rewards([record("42")] * 3, replies, [[1, 2], [1, 2, 3, 4, 5], [1, 2, 3]], CPU)
    assert list(out.parts) == ["exact_answer", "format", "length"]
    assert out.parts["exact_answer"].tolist() == [1.0, 0.0, 1.0]
    assert out.parts["format"].tolist() == [1.0, 0.0, 0.0]
    assert out.parts["length"].tolist() == [0.0, -1.0, -0.5]
    torch.testing.assert_close(out.total, torch.tensor([1.2, -0.5, 0.75]))


def test_an_entry_is_checked_before_the_run():
    with pytest.raises(ConfigError, match=r"model.reward_funcs\[0\].name: 'exact' is not a registered reward"):
        WeightedRewards([{"name": "exact"}])
    with pytest.raises(ConfigError, match=r"reward_funcs\[1\].kwargs: format needs pattern"):
        WeightedRewards([{"name": "exact_answer"}, {"name": "format"}])
    with pytest.raises(ConfigError, match=r"reward_funcs\[0\].name: 'tests.nowhere:f': cannot import"):
        WeightedRewards([{"name": "tests.nowhere:f"}])
    with pytest.raises(ConfigError, match=r"reward_funcs\[1\].label: 'format' is logged twice"):
        WeightedRewards([RewardFunc("format", kwargs={"pattern": "a"}), RewardFunc("format", kwargs={"pattern": "b"})])
    with pytest.raises(ConfigError, match=r"reward_funcs\[0\].kwargs: a reward_model entry takes path"):
        WeightedRewards([{"name": "reward_model"}])
    with pytest.raises(ConfigError, match="at least one"):
        WeightedRewards([])
    assert {"exact_answer", "format", "length_penalty"} <= set(REWARD_FUNCTIONS)
    path = WeightedRewards([{"name": "tests.test_rewards_list:three_values"}])
    assert path.labels == ["three_values"]


def test_a_bad_function_is_named():
    records = [record("42")] * 4
    wrong = WeightedRewards([{"name": "exact_answer"}, {"name": "tests.test_rewards_list:three_values",
                                                          "label": "format"}])
    with pytest.raises(RewardError, match=r"^reward function 'format' returned 3 values for 4 replies$"):
        wrong(records, ["42"] * 4, [[1]] * 4, CPU)
    raising = WeightedRewards([{"name": "tests.test_rewards_list:broken"}])
    with pytest.raises(RewardError, match=r"^reward function 'broken' raised KeyError: 'score'$"):
        raising(records, ["42"] * 4, [[1]] * 4, CPU)
    no_answer = WeightedRewards([{"name": "exact_answer"}])
    with pytest.raises(RewardError, match=r"^reward function 'exact_answer' raised ValueError: the prompt record"):
        no_answer([{"prompt": [{"role": "user", "content": "?"}]}], ["42"], [[1]], CPU)
    assert issubclass(RewardError, UserError)  # printed as one line by the command line


# ---- in a run -----------------------------------------------------------------------------------------------------
LIST = ("[{name: token_fraction, weight: 2.0, kwargs: {token_ids: [198]}, label: newlines},"
        " {name: 'tests.test_rewards_list:vowel_share', weight: 0.5}]")
LIST_ARGS = ["--model.init_args.reward_fn", "null", "--model.init_args.reward_fn_kwargs", "null",
             "--model.init_args.reward_funcs", LIST]


def test_each_reward_function_is_logged_on_its_own(tmp_path):
    """configs/ppo/tiny.yaml with two weighted functions: every step logs each function's mean and the total, which
    is 2 x newlines + 0.5 x vowel_share and the score PPO trains on; the logged replies' own vowel shares, computed
    again here, average to the logged mean; validation logs the same names."""
    cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), *LIST_ARGS, "--samples.enabled", "false"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("ppo").experiment_id)[0]
    history = {k: [m.value for m in sorted(c.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
               for k in ("train/rewards/newlines", "train/rewards/vowel_share", "train/rewards/total",
                         "objective/scores")}
    assert len(history["train/rewards/total"]) == 4
    for newlines, vowels, total, score in zip(*history.values()):
        assert total == pytest.approx(2 * newlines + 0.5 * vowels, abs=1e-6) == pytest.approx(score, abs=1e-6)
    assert max(history["train/rewards/newlines"]) > min(history["train/rewards/newlines"])
    m = run.data.metrics
    assert m["val/rewards/total"] == pytest.approx(2 * m["val/rewards/newlines"] + 0.5 * m["val/rewards/vowel_share"],
                                                   abs=1e-5)
    assert m["val/rewards/total"] == pytest.approx(m["val/scores"], abs=1e-5)
    table = json.loads(Path(c.download_artifacts(run.info.run_id, "rollouts/step000002.json", str(tmp_path)))
                       .read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert all(r["reward/vowel_share"] == pytest.approx(vowel_share([r["response"].strip()])[0]) for r in rows)
    mean = sum(r["reward/vowel_share"] for r in rows) / len(rows)
    assert any(v == pytest.approx(mean, abs=1e-6) for v in history["train/rewards/vowel_share"])


def test_a_wrong_reward_function_stops_the_run_naming_it(tmp_path):
    out = cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), "--model.init_args.reward_fn", "null",
               "--model.init_args.reward_fn_kwargs", "null", "--model.init_args.reward_funcs",
               "[{name: 'tests.test_rewards_list:three_values', label: format}]", "--samples.enabled", "false"],
              tmp_path, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: reward function 'format' returned 3 values for 16 replies" in out.stderr
    assert "Traceback" not in out.stderr
    both = cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), "--model.init_args.reward_funcs",
                "[{name: exact_answer}]"], tmp_path, check=False)
    assert both.returncode != 0 and "give exactly one of reward_model" in both.stderr
