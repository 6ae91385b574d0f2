"""The safety filter: rules on fixed inputs (a planted e-mail address is removed, a clean record is not), dry runs,
model classifiers against their own scores, every data module that takes it, and its MLflow record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_post.safety.filter import SafetyFilter, apply_safety_filter, filter_splits, model_classifier
from tests.conftest import CONFIGS, write_jsonl
from tests.cli_runner import cli, client

CLEAN = {"instruction": "Name a primary colour.", "input": "", "response": "Red is a primary colour."}
EMAIL = {"instruction": "Who do I contact?", "input": "", "response": "Write to jane.doe@example.com for help."}
PHONE = {"messages": [{"role": "user", "content": "Call whom?"}, {"role": "assistant", "content": "Call (415) 555-2671."}]}


def test_a_planted_email_is_removed_and_a_clean_record_is_not():
    result = apply_safety_filter([CLEAN, EMAIL, PHONE], SafetyFilter())
    assert result.kept == [CLEAN]
    assert [(r["index"], r["reasons"]) for r in result.removed] == [(1, ["pii:email"]), (2, ["pii:phone"])]
    assert result.removed[0]["findings"] == [{"reason": "pii:email", "field": "response",
                                              "match": "jane.doe@example.com"}]
    assert result.counts == {"pii:email": 1, "pii:phone": 1} and result.total == 3


def test_numbers_that_only_look_like_personal_data_drop_no_record():
    """Each of these used to remove a good training record: a Luhn-invalid card number, an invoice number, digits
    of pi, an SSN in a reserved range, an IP address read as a phone number."""
    looks_like = ["Card 1234 5678 9012 3456 is the textbook example.", "Invoice 2024-1234-5678 is paid.",
                  "Pi is 3.14159265358979323846264338327950288.", "The form shows 000-12-3456.",
                  "Ping 192.168.100.200 first."]
    records = [{"instruction": "Answer.", "input": "", "response": text} for text in looks_like]
    assert apply_safety_filter(records, SafetyFilter()).kept == records
    real = [{"instruction": "Answer.", "input": "", "response": "Card 4111 1111 1111 1111."},
            {"instruction": "Answer.", "input": "", "response": "전화 010-1234-5678로 주세요."}]
    assert [r["reasons"] for r in apply_safety_filter(real, SafetyFilter()).removed] == [["pii:credit_card"],
                                                                                         ["pii:phone"]]


def test_rules_kinds_fields_regex_blocklist_and_dry_run():
    only_email = SafetyFilter(pii_kinds=["email"])
    assert apply_safety_filter([CLEAN, EMAIL, PHONE], only_email).kept == [CLEAN, PHONE]
    pair = {"prompt": [{"role": "user", "content": "Contact?"}], "raw_prompt": "Contact?", "chosen": "I can't share that.",
            "rejected": "Mail bob@example.org"}
    assert apply_safety_filter([pair], SafetyFilter()).kept == []  # every text field by default
    assert apply_safety_filter([pair], SafetyFilter(fields=["prompt", "chosen"])).kept == [pair]
    words = SafetyFilter(rules=["blocklist"], blocklist=["nerve agent", "ass"])
    texts = [{"prompt": "How is a nerve agent made?"}, {"prompt": "A classic assignment."}, {"prompt": "You ass."}]
    result = apply_safety_filter(texts, words)
    assert [r["index"] for r in result.removed] == [0, 2]  # whole words only: "classic"/"assignment" stay
    assert result.removed[0]["findings"][0]["match"] == "nerve agent"
    rx = SafetyFilter(rules=["regex", "pii"], patterns={"api_key": r"sk-[A-Za-z0-9]{20,}"})
    secret = {"prompt": "my key is sk-abcdefghijklmnopqrstuvwx, mail me at a@b.io"}
    assert apply_safety_filter([secret], rx).removed[0]["reasons"] == ["pii:email", "regex:api_key"]
    dry = apply_safety_filter([CLEAN, EMAIL], SafetyFilter(dry_run=True))
    assert dry.kept == [CLEAN, EMAIL] and dry.counts == {"pii:email": 1}


@pytest.mark.parametrize("kwargs, message", [
    ({"rules": ["toxicity"]}, "unknown \\['toxicity'\\]"),
    ({"pii_kinds": ["passport"]}, "unknown \\['passport'\\]"),
    ({"rules": ["regex"]}, "needs patterns"),
    ({"rules": ["regex"], "patterns": {"bad": "("}}, "patterns.bad: not a regular expression"),
    ({"rules": ["blocklist"]}, "needs blocklist"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SafetyFilter(**kwargs)


def test_reward_model_threshold_removes_exactly_the_low_scores(tmp_path, tiny_path):
    """A (random) sequence-classification model saved once; the filter removes the replies whose score, computed
    by the scorer itself, is below the threshold: between the 3rd and 4th of 6 scores, so 3."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_post.scoring.rewards import RewardModelScorer

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=1)
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(tmp_path / "rm")
    records = [{"instruction": f"Say {w}.", "input": "", "response": f"{w} {w}!"} for w in
               ("yes", "no", "maybe", "never", "always", "often")]
    scorer = RewardModelScorer(str(tmp_path / "rm"))
    scores = scorer.score([{"prompt": [{"role": "user", "content": r["instruction"]}], "raw_prompt": r["instruction"]}
                           for r in records], [r["response"] for r in records], torch.device("cpu")).tolist()
    threshold = (sorted(scores)[2] + sorted(scores)[3]) / 2  # midway: batching noise cannot move a score across
    cfg = SafetyFilter(rules=[], reward_model=str(tmp_path / "rm"), reward_threshold=threshold)
    result = apply_safety_filter(records, cfg, model_classifier(cfg))
    assert [r["index"] for r in result.removed] == sorted(i for i, s in enumerate(scores) if s < threshold)
    assert len(result.removed) == 3 and result.counts == {"reward_model": 3}
    # a record the rules already removed is not scored again; bare prompts are never judged
    both = SafetyFilter(reward_model=str(tmp_path / "rm"), reward_threshold=threshold)
    splits, report = filter_splits({"train": records + [EMAIL], "val": [{"prompt": "hi"}]}, both)
    assert report["splits"]["train"]["by_reason"] == {"pii:email": 1, "reward_model": 3} and len(splits["train"]) == 3
    assert report["splits"]["val"]["removed"] == 0


def test_every_data_module_takes_the_filter(tmp_path, tiny_path):
    from lightning_post import InstructionDataModule, PreferenceDataModule, PromptDataModule

    instr = write_jsonl(tmp_path / "instr.jsonl", [CLEAN] * 6 + [EMAIL] * 2)
    dm = InstructionDataModule(tokenizer=tiny_path, train_files=str(instr), val_files=str(instr),
                               safety_filter=SafetyFilter())
    dm.setup("fit")
    assert len(dm.splits["train"]) == 6 and dm.safety_report["splits"]["train"]["by_reason"] == {"pii:email": 2}
    # what the data module declares for the run's MLflow record (trainer_cli.MLflowConfig writes it as it is)
    record = dm.run_record("fit")
    assert record.params["safety_filter/train_removed/pii_email"] == 2 and record.params["data/train_examples"] == 6
    assert "data/invalid_pairs" not in record.params  # an instruction module keeps no skipped records
    assert json.loads(record.artifacts["safety_filter/report.json"])["splits"]["train"]["removed"] == 2
    assert record.datasets == [("train", str(instr), {"rows": 8}), ("val", str(instr), {"rows": 8})]  # no test
    assert [split for split, _, _ in dm.run_record("test").datasets] == ["test"]
    dry = InstructionDataModule(tokenizer=tiny_path, train_files=str(instr), val_files=str(instr),
                                safety_filter=SafetyFilter(dry_run=True))
    dry.setup("fit")
    assert len(dry.splits["train"]) == 8 and dry.safety_report["splits"]["train"]["removed"] == 2
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Contact?", "chosen": "Email me at x@y.com", "rejected": "No."},
        *[{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(4)]])
    pm = PreferenceDataModule(tokenizer=tiny_path, train_files=str(pairs), val_files=str(pairs),
                              safety_filter=SafetyFilter())
    pm.setup("fit")
    assert len(pm.splits["train"]) == 4
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Text (415) 555-2671 now"}, {"prompt": "Hello"},
                                                       {"prompt": "Hi"}])
    rm = PromptDataModule(tokenizer=tiny_path, train_files=str(prompts), val_files=str(prompts),
                          safety_filter=SafetyFilter())
    rm.setup("fit")
    assert [e.record["prompt"][-1]["content"] for e in rm.splits["train"].rows] == ["Hello", "Hi"]
    everything = InstructionDataModule(tokenizer=tiny_path, train_files=str(write_jsonl(tmp_path / "e.jsonl", [EMAIL])),
                                       val_files=str(instr), safety_filter=SafetyFilter())
    with pytest.raises(ValueError, match="removed every training record"):
        everything.setup("fit")


def test_fit_records_the_filter_in_mlflow(tmp_path):
    records = [CLEAN, EMAIL, PHONE, *[{"instruction": f"Count to {n}.", "input": "", "response": " ".join(
        map(str, range(1, n + 1)))} for n in range(2, 12)]]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
         "--data.init_args.train_files", str(data), "--data.init_args.val_files", str(data),
         "--data.init_args.safety_filter", json.dumps({"rules": ["pii"], "max_logged": 1})], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("sft").experiment_id)[0]
    m = run.data.params  # counts fixed at setup are params: the metrics page keeps the curves
    assert m["safety_filter/train_total"] == "13" and m["safety_filter/train_removed"] == "2"
    assert m["safety_filter/train_removed/pii_email"] == "1" and m["safety_filter/train_removed/pii_phone"] == "1"
    assert m["data/train_examples"] == "11" and "data/train_examples" not in run.data.metrics
    report = json.loads(Path(c.download_artifacts(run.info.run_id, "safety_filter/report.json", str(tmp_path)))
                        .read_text())
    assert len(report["sample"]) == 1 and report["sample"][0]["record"]["response"] == EMAIL["response"]
