"""The verifiable arithmetic task: seeded records, train and held-out problems that never overlap (whatever the
seeds, sizes and languages), ``lightning-post data arithmetic``, and its records read by PromptDataModule with the
answer passed through to the reward functions."""

from __future__ import annotations

import json
import re

import pytest

from lightning_post import PromptDataModule
from lightning_post.commands import run_command
from lightning_post.errors import UserError
from lightning_post.records.arithmetic import arithmetic_records, problem_split
from lightning_post.records.files import DataError
from lightning_post.records.prompts import normalize_prompt_record
from lightning_post.scoring.rewards import exact_answer

QUESTION = re.compile(r"(?:What is )?(\d+) ([-+*]) (\d+)(?:\?|의 값은)")


def problem(rec: dict) -> tuple[int, str, int]:
    a, op, b = QUESTION.match(rec["prompt"]).groups()
    return int(a), op, int(b)


def test_records_are_seeded_and_right():
    a = arithmetic_records(50, seed=3, operations="+-*")
    assert a == arithmetic_records(50, seed=3, operations="+-*") != arithmetic_records(50, seed=4, operations="+-*")
    assert arithmetic_records(20, seed=3, operations="+-*") == a[:20]  # a smaller set is a prefix of a larger one
    assert len({r["prompt"] for r in a}) == 50
    for rec in a:
        x, op, y = problem(rec)
        assert rec["answer"] == str({"+": x + y, "-": x - y, "*": x * y}[op]) and 0 <= x <= 99 and 0 <= y <= 99
        assert op != "-" or x >= y
        assert rec["prompt"].endswith("? Answer with the number.")
    assert {problem(r)[1] for r in a} == {"+", "-", "*"}


def test_train_and_heldout_never_share_a_problem():
    """By construction: each problem's split is a fixed rule of the problem, so sets drawn with any seeds, sizes and
    languages are disjoint; about a fifth of all problems is held out."""
    train = {problem(r) for seed in range(3) for lang in ("en", "ko") for r in arithmetic_records(2000, seed, "train",
                                                                                                 lang)}
    heldout = {problem(r) for seed in range(3) for r in arithmetic_records(800, seed, "heldout", "both")}
    assert train and heldout and not train & heldout
    assert all(problem_split(*p) == "train" for p in train) and all(problem_split(*p) == "heldout" for p in heldout)
    everything = [(a, "+", b) for a in range(100) for b in range(100)]
    share = sum(problem_split(*p) == "heldout" for p in everything) / len(everything)
    assert 0.15 < share < 0.25


def test_korean_questions_and_errors():
    ko = arithmetic_records(3, seed=0, language="ko")
    en = arithmetic_records(3, seed=0)
    assert [r["answer"] for r in ko] == [r["answer"] for r in en]
    assert all(r["prompt"].endswith("의 값은 얼마입니까? 숫자로 답하세요.") for r in ko)
    both = arithmetic_records(40, seed=0, language="both")
    assert {r["prompt"].startswith("What") for r in both} == {True, False}
    with pytest.raises(ValueError, match="split"):
        arithmetic_records(1, split="test")
    with pytest.raises(ValueError, match="operations"):
        arithmetic_records(1, operations="/")
    with pytest.raises(ValueError, match="asked for 100"):
        arithmetic_records(100, max_operand=3)


def test_the_true_answers_score_one():
    """exact_answer, on the records' own answers in the ways a model writes them (Korean included), gives 1, and 0
    on the answer plus one."""
    recs = [normalize_prompt_record(r, f"x:{i}") for i, r in enumerate(arithmetic_records(8, 0, "heldout", "both"))]
    styles = ["{}", "The answer is {}.", "**{}**", "정답은 {}입니다", "{}.0"]
    for style in styles:
        assert exact_answer([style.format(r["answer"]) for r in recs], recs) == [1.0] * 8, style
    assert exact_answer([str(int(r["answer"]) + 1) for r in recs], recs) == [0.0] * 8


def test_the_command_writes_both_splits(tmp_path):
    out = tmp_path / "arith"
    summary = run_command("data arithmetic", ["--output_dir", str(out), "--train_size", "30", "--heldout_size", "10",
                                              "--language", "both", "--seed", "5"])
    assert summary == {"train": 30, "heldout": 10, "output_dir": str(out)}
    train = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    assert train == arithmetic_records(30, 5, "train", "both") and len(heldout) == 10
    assert not {problem(r) for r in train} & {problem(r) for r in heldout}
    with pytest.raises(UserError, match="the heldout split has"):
        run_command("data arithmetic", ["--output_dir", str(tmp_path / "x"), "--train_size", "10",
                                        "--heldout_size", "100", "--max_operand", "5"])
    with pytest.raises(UserError, match="train_size: must be >= 0"):
        run_command("data arithmetic", ["--output_dir", str(tmp_path / "x"), "--train_size", "-1"])


def test_prompt_records_keep_their_answer(tiny_path, tmp_path):
    """The normaliser keeps ``answer`` (a number becomes text), refuses a blank or structured one, and
    PromptDataModule hands the record, answer included, to the reward functions through the batch."""
    assert normalize_prompt_record({"prompt": "2 + 2?", "answer": 4}, "f:1")["answer"] == "4"
    assert normalize_prompt_record({"prompt": "수도는?", "answer": " 서울 "}, "f:1")["answer"] == "서울"
    assert "answer" not in normalize_prompt_record({"prompt": "Hi", "answer": None}, "f:1")
    pair = normalize_prompt_record({"prompt": "2 + 2?", "chosen": "4", "rejected": "5", "answer": "4"}, "f:1")
    assert pair["answer"] == "4"
    for bad in ("", [4], True):
        with pytest.raises(DataError, match="f:1: field 'answer'"):
            normalize_prompt_record({"prompt": "2 + 2?", "answer": bad}, "f:1")
    run_command("data arithmetic", ["--output_dir", str(tmp_path / "a"), "--train_size", "8", "--heldout_size", "4"])
    dm = PromptDataModule(train_files=str(tmp_path / "a/train.jsonl"), val_files=str(tmp_path / "a/heldout.jsonl"),
                          tokenizer=tiny_path, batch_size=4, shuffle=False)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    want = arithmetic_records(4, 1, "heldout")
    assert [r["answer"] for r in batch["records"]] == [r["answer"] for r in want]
    assert [r["prompt"][-1]["content"] for r in batch["records"]] == [r["prompt"] for r in want]


def test_the_grpo_arithmetic_config_runs_on_the_tiny_model(tmp_path):
    """configs/ppo/grpo_arithmetic.yaml, shrunk to the tiny model and two rollouts, on files written by the command:
    both reward functions and the held-out accuracy are logged (the random model answers nothing right)."""
    from tests.cli_runner import cli, client
    from tests.conftest import CONFIGS

    run_command("data arithmetic", ["--output_dir", str(tmp_path / "data/arithmetic"), "--train_size", "8",
                                    "--heldout_size", "4"])
    cli(["fit", "--config", str(CONFIGS / "ppo/grpo_arithmetic.yaml"), "--model.init_args.model_name_or_path",
         "tiny-llama", "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
         "--model.init_args.samples_per_prompt", "2", "--model.init_args.max_new_tokens", "4", "--data.batch_size", "2",
         "--data.eval_batch_size", "4", "--samples.enabled", "false", "--export.enabled", "false",
         "--trainer.enable_progress_bar", "false"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("grpo_arithmetic").experiment_id)[0]
    for key in ("train/rewards/exact_answer", "train/rewards/format", "train/rewards/total", "val/rewards/exact_answer",
                "objective/distinct_2"):
        assert key in run.data.metrics, key
    assert run.data.metrics["val/rewards/exact_answer"] == 0.0
