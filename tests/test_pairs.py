"""Preference data: record layouts, HH-RLHF splitting, truncation, the [chosen; rejected] collator, errors."""

from __future__ import annotations

import gzip
import json

import pytest

from lightning_post.data.collate import collate_pairs, split_pairs
from lightning_post.records.chat import split_hh_dialogue
from lightning_post.records.preference import normalize_preference_record
from lightning_post.records.tokenize import PairStats, tokenize_pair, truncate_pair
from lightning_post.data.preference import PreferenceDataModule
from lightning_post.records.files import DataError
from lightning_post.records.tokenize import IGNORE_INDEX
from tests.conftest import SHARED_DATA, write_jsonl

HH = SHARED_DATA / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz"


def test_three_layouts_normalise_to_the_same_pair():
    explicit = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "margin": 2, "weight": 0.5}
    chat = {
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
        "margin": 2, "weight": 0.5,
    }
    hh = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away.",
          "margin": 2, "weight": 0.5}
    a, b, c = (normalize_preference_record(r, "f:1") for r in (explicit, chat, hh))
    for pair in (a, b, c):
        assert pair["prompt"] == [{"role": "user", "content": "Hi?"}]
        assert pair["chosen"].strip() == "Hello!" and pair["rejected"].strip() == "Go away."
        assert pair["margin"] == 2.0 and pair["weight"] == 0.5
    assert c["raw_prompt"] == "\n\nHuman: Hi?\n\nAssistant:" and c["chosen"] == " Hello!"


def test_hh_prompt_is_everything_up_to_the_last_assistant_marker():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d e"
    assert split_hh_dialogue(text) == ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " d e")
    pair = normalize_preference_record({"chosen": text, "rejected": text[:-3] + "no"}, "f:1")
    assert pair["prompt"] == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
    ]
    assert (pair["chosen"], pair["rejected"]) == (" d e", " no")


@pytest.mark.parametrize("record, field, problem", [
    ({"prompt": "p", "rejected": "r"}, "chosen", "is missing"),
    ({"prompt": "p", "chosen": "c", "rejected": "  "}, "rejected", "is empty"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "high"}, "margin", "finite number"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "weight": -1}, "weight", ">= 0"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "rejected",
     "does not share the prompt"),
    ({"chosen": "just text", "rejected": "other"}, "chosen", "has no prompt"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}, "rejected",
     "does not share the conversation"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "a"}]}, "chosen",
     "must end with an assistant turn"),
    ({"prompt": "p", "chosen": [{"role": "robot", "content": "x"}], "rejected": "r"}, "chosen[0].role", "must be one of"),
])
def test_malformed_pairs_name_the_field(record, field, problem):
    with pytest.raises(DataError) as err:
        normalize_preference_record(record, "data.jsonl:7")
    assert err.value.where == "data.jsonl:7" and err.value.field == field and problem in err.value.problem


def test_bad_row_in_a_file_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                              {"prompt": "a", "chosen": "b"}])
    dm = PreferenceDataModule(train_files=str(path), tokenizer="tiny-llama")
    with pytest.raises(DataError, match=rf"{path}:2: field 'rejected': is missing"):
        dm.prepare_data()


def test_truncation_keeps_the_replies_and_cuts_the_prompt_from_the_left():
    prompt, chosen, rejected = list(range(100, 140)), [1, 2, 3, 4, 5], [6, 7]
    p, c, r, p_cut, r_cut = truncate_pair(prompt, chosen, rejected, max_length=20, min_prompt_length=4)
    assert (c, r) == (chosen, rejected) and p == prompt[-15:] and p_cut and not r_cut
    assert len(p) + len(c) <= 20
    # a BOS at the start survives the cut
    p, *_ = truncate_pair([0] + prompt, chosen, rejected, max_length=20, min_prompt_length=4, bos_id=0)
    assert p == [0] + prompt[-14:]
    # replies too long even for the minimum prompt: cut from the right, the prompt keeps min_prompt_length
    p, c, r, p_cut, r_cut = truncate_pair(prompt, list(range(30)), rejected, max_length=20, min_prompt_length=4)
    assert p == prompt[-4:] and c == list(range(16)) and r == rejected and p_cut and r_cut
    # fits: untouched
    assert truncate_pair([1, 2], [3], [4], 10, 1) == ([1, 2], [3], [4], False, False)


def test_tokenized_pair_shares_the_prompt_and_labels_only_the_reply(tokenizer):
    pair = normalize_preference_record({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."}, "x")
    for template in ("chat", "conversational", "basic", "raw"):
        stats = PairStats()
        ex = tokenize_pair(pair, template, tokenizer, 512, 8, stats)
        for side, reply in ((ex.chosen, "Paris."), (ex.rejected, "Rome.")):
            first = next(i for i, lab in enumerate(side.labels) if lab != IGNORE_INDEX)
            assert all(lab == IGNORE_INDEX for lab in side.labels[:first])
            assert side.labels[first:] == side.input_ids[first:]
            assert reply in tokenizer.decode(side.input_ids[first:])
            assert "France" not in tokenizer.decode(side.input_ids[first:])
        n = next(i for i, lab in enumerate(ex.chosen.labels) if lab != IGNORE_INDEX)
        assert ex.chosen.input_ids[:n] == ex.rejected.input_ids[:n]
        assert tokenizer.decode(ex.chosen.input_ids[n:]).endswith(tokenizer.eos_token)  # the reply ends in EOS
    chat = tokenize_pair(pair, "chat", tokenizer, 512, 8, PairStats())
    assert "<|im_start|>user\nCapital of France?<|im_end|>" in tokenizer.decode(chat.chosen.input_ids)


def test_hh_raw_template_keeps_the_dialogue_text_verbatim(tokenizer):
    text_c = "\n\nHuman: hi there\n\nAssistant: hello friend"
    pair = normalize_preference_record({"chosen": text_c, "rejected": text_c[:-6] + "foe"}, "x")
    ex = tokenize_pair(pair, "raw", tokenizer, 512, 8, PairStats())
    assert tokenizer.decode(ex.chosen.input_ids) == text_c + tokenizer.eos_token


def test_collator_concatenates_chosen_then_rejected_and_micro_batches_keep_pairs(tokenizer, tmp_path):
    records = [{"prompt": f"Question {i}?", "chosen": "yes " * (i + 1), "rejected": "no", "margin": i, "weight": 1 + i}
               for i in range(5)]
    dm = PreferenceDataModule(train_files=str(write_jsonl(tmp_path / "p.jsonl", records)), val_files=str(tmp_path / "p.jsonl"),
                              tokenizer="tiny-llama", template="basic", batch_size=5)
    dm.prepare_data()
    dm.setup("fit")
    pairs = dm.splits["val"].rows
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 10
    for i, p in enumerate(pairs):
        n_c, n_r = len(p.chosen.input_ids), len(p.rejected.input_ids)
        assert batch["input_ids"][i, :n_c].tolist() == p.chosen.input_ids
        assert batch["input_ids"][5 + i, :n_r].tolist() == p.rejected.input_ids
    assert batch["margin"].tolist() == [0, 1, 2, 3, 4] and batch["weight"].tolist() == [1, 2, 3, 4, 5]
    micro = split_pairs(batch, 2)
    assert [m["index"].tolist() for m in micro] == [[0, 1], [2, 3], [4]]
    for m in micro:
        b = m["index"].shape[0]
        assert m["input_ids"].shape[0] == 2 * b
        for j, idx in enumerate(m["index"].tolist()):
            n_c = len(pairs[idx].chosen.input_ids)
            assert m["input_ids"][j, :n_c].tolist() == pairs[idx].chosen.input_ids
            assert m["input_ids"][b + j, : len(pairs[idx].rejected.input_ids)].tolist() == pairs[idx].rejected.input_ids
        assert m["attention_mask"][:, -1].any()  # columns of padding only are trimmed


def test_identical_pairs_are_reported_and_dropped(tmp_path, caplog):
    records = [{"prompt": "a", "chosen": "same", "rejected": "same "}, {"prompt": "b", "chosen": "x", "rejected": "y"},
               {"prompt": "c", "chosen": "u", "rejected": "v"}]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    dm = PreferenceDataModule(train_files=str(path), val_files=str(path), tokenizer="tiny-llama")
    dm.prepare_data()
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert dm.stats["train"].identical == 1 and dm.stats["train"].dropped == 1
    assert len(dm.splits["train"].rows) == 2
    assert f"{path}:1" in caplog.text
    kept = PreferenceDataModule(train_files=str(path), val_files=str(path), tokenizer="tiny-llama", drop_identical=False)
    kept.prepare_data()
    kept.setup("fit")
    assert kept.stats["train"].identical == 1 and len(kept.splits["train"].rows) == 3


def test_real_hh_rlhf_file_loads_with_a_fixed_held_out_split():
    """The HH-RLHF harmless test file stops at its first broken row (line 87: the chosen reply is empty); with
    ``skip_invalid`` its broken rows are reported and left out, and the held-out split is fixed and disjoint."""
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    with pytest.raises(DataError, match=r"jsonl.gz:87: field 'chosen'"):
        PreferenceDataModule(train_files=str(HH), tokenizer="tiny-llama")._read_all()
    dm = PreferenceDataModule(train_files=str(HH), val_size=300, max_train_pairs=64, tokenizer="tiny-llama",
                              template="raw", max_length=256, skip_invalid=True)
    records = dm._read_all()
    bad = {e.where.rsplit(":", 1)[1] for e in dm.invalid}
    assert {"87", "517", "926", "1104", "1255"} <= bad and len(bad) < 20
    assert len(records["val"]) == 300 and len(records["train"]) == 64
    val_where = {w for w, _ in records["val"]}
    assert not val_where & {w for w, _ in records["train"]}
    again = PreferenceDataModule(train_files=str(HH), val_size=300, tokenizer="tiny-llama", skip_invalid=True)
    full = again._read_all()
    assert {w for w, _ in full["val"]} == val_where and len(full["train"]) == len(lines) - len(bad) - 300
    for where, pair in full["train"][:50]:
        line = lines[int(where.rsplit(":", 1)[1]) - 1]
        assert line["chosen"] == pair["raw_prompt"] + pair["chosen"]
        assert line["rejected"] == pair["raw_prompt"] + pair["rejected"]


def test_scoring_records_read_pairs_and_single_replies(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "a", "response": "b"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"prompt": "a", "chosen": "b", "rejected": "c"},
    ])
    dm = PreferenceDataModule(predict_files=str(path), tokenizer="tiny-llama", template="basic")
    dm.prepare_data()
    dm.setup("predict")
    rows = dm.splits["predict"].rows
    assert [(i, s) for i, s, _ in rows] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert rows[0][2].input_ids == rows[1][2].input_ids == rows[2][2].input_ids  # same text, same tokens
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}])
    with pytest.raises(DataError, match=rf"{bad}:1: field 'response': is missing"):
        PreferenceDataModule(predict_files=str(bad), tokenizer="tiny-llama").prepare_data()
