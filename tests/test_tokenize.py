"""Label masking checked token by token; BOS/EOS exactly once; truncation."""

from lightning_post.records.templates import to_segments
from lightning_post.records.tokenize import IGNORE_INDEX, Tokenized, tokenize_segments, truncate

REC = {"instruction": "Name a colour.", "input": "", "response": "Blue."}


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_named_template_masks_prompt_and_appends_eos_once(tokenizer):
    ex = tokenize_segments(to_segments(REC, "basic"), tokenizer, template_is_chat=False)
    prompt = ids(tokenizer, "### Instruction:\nName a colour.\n\n### Response:\n")
    reply = ids(tokenizer, "Blue.") + [tokenizer.eos_token_id]
    assert ex.input_ids == prompt + reply
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + reply
    assert ex.input_ids.count(tokenizer.eos_token_id) == 1


def test_response_already_ending_in_eos_gets_no_second_eos(tokenizer):
    rec = dict(REC, response="Blue." + tokenizer.eos_token)
    ex = tokenize_segments(to_segments(rec, "basic"), tokenizer, template_is_chat=False)
    assert ex.input_ids.count(tokenizer.eos_token_id) == 1 and ex.input_ids[-1] == tokenizer.eos_token_id


def test_chat_template_labels_token_by_token(tokenizer):
    ex = tokenize_segments(to_segments(REC, "chat", tokenizer), tokenizer, template_is_chat=True)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], tokenize=False, add_generation_prompt=True
    )
    prompt = ids(tokenizer, text)
    reply = ids(tokenizer, "Blue.<|im_end|>")
    assert ex.input_ids == prompt + reply
    assert ex.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert ex.labels[len(prompt):] == reply
    # EOS (<|im_end|>) closes every turn; the reply ends with exactly one, never a doubled one
    assert ex.input_ids[-1] == tokenizer.eos_token_id
    assert ex.input_ids[-2] != tokenizer.eos_token_id
    # the chat template's <|im_start|> opens the text once: no doubled BOS
    assert ex.input_ids[:2] != [tokenizer.bos_token_id] * 2


def test_bos_prepended_once_when_tokenizer_asks(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "add_bos_token", True, raising=False)
    ex = tokenize_segments(to_segments(REC, "basic"), tokenizer, template_is_chat=False)
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.input_ids[1] != tokenizer.bos_token_id
    already = [("%s### Instruction:\nx\n\n### Response:\n" % tokenizer.bos_token, False), ("y", True)]
    ex = tokenize_segments(already, tokenizer, template_is_chat=False)
    assert ex.input_ids.count(tokenizer.bos_token_id) == 1


def test_truncation_right_and_drop():
    ex = Tokenized([1, 2, 3, 4, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, 6])
    assert truncate(ex, 4, "right") == Tokenized([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4])
    assert truncate(ex, 4, "drop") is None
    assert truncate(ex, 6, "drop") == ex
    # nothing left to learn after cutting: dropped
    assert truncate(ex, 2, "right") is None
