"""Unpaired (KTO) examples: validation and the collator's mismatched KL rows."""

import pytest

from lightning_post.records.files import DataError
from lightning_post.data.unpaired import UnpairedExample, collate_unpaired
from lightning_post.records.unpaired import normalize_unpaired_record


@pytest.mark.parametrize("record, field", [
    ({"prompt": "p", "completion": "c", "label": "yes"}, "label"),
    ({"prompt": "p", "label": True}, "completion"),
    ({"completion": "c", "label": False}, "prompt"),
    ({"prompt": "p", "completion": " ", "label": True}, "completion"),
])
def test_bad_unpaired_records_name_their_field(record, field):
    with pytest.raises(DataError) as err:
        normalize_unpaired_record(record, "kto.jsonl:4")
    assert err.value.where == "kto.jsonl:4" and err.value.field == field


def test_chat_prompt_and_assistant_completion():
    rec = normalize_unpaired_record({"prompt": [{"role": "user", "content": "Hi"}],
                                     "completion": [{"role": "assistant", "content": "Hello"}], "label": False}, "x")
    assert rec["prompt"] == [{"role": "user", "content": "Hi"}] and rec["completion"] == "Hello" and not rec["label"]


def test_collator_rotates_completions_for_the_kl_rows():
    ex = [UnpairedExample([1, 2], [10, 11], True, 0), UnpairedExample([3], [20], False, 1),
          UnpairedExample([4, 5, 6], [30, 31, 32], True, 2)]
    b = collate_unpaired(ex, pad_id=0, max_length=16, min_prompt_length=1)
    assert b["input_ids"][0, :4].tolist() == [1, 2, 10, 11] and b["labels"][0, :4].tolist() == [-100, -100, 10, 11]
    # prompt_i with completion_{i+1 mod 3}
    assert b["kl_input_ids"][0, :3].tolist() == [1, 2, 20]
    assert b["kl_input_ids"][1, :4].tolist() == [3, 30, 31, 32]
    assert b["kl_input_ids"][2, :5].tolist() == [4, 5, 6, 10, 11]
    assert b["kl_labels"][2, :5].tolist() == [-100, -100, -100, 10, 11]
    assert b["desirable"].tolist() == [True, False, True] and b["index"].tolist() == [0, 1, 2]
    # the KL rows obey max_length by cutting the prompt from the left
    short = collate_unpaired(ex, pad_id=0, max_length=4, min_prompt_length=1)
    assert short["kl_input_ids"][2].tolist() == [5, 6, 10, 11]
