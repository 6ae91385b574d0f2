"""Templates are checked string by string."""

import pytest

from lightning_post.records.templates import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, check_template, to_segments

REC = {"instruction": "Name a colour.", "input": "", "response": "Blue."}
REC_IN = {"instruction": "Add the numbers.", "input": "2 3", "response": "5"}


def joined(segments):
    return "".join(text for text, _ in segments)


def test_basic():
    assert to_segments(REC, "basic") == [("### Instruction:\nName a colour.\n\n### Response:\n", False), ("Blue.", True)]


def test_with_input_is_chosen_automatically_when_input_is_non_empty():
    expected = "### Instruction:\nAdd the numbers.\n\n### Input:\n2 3\n\n### Response:\n5"
    assert joined(to_segments(REC_IN, "basic")) == expected
    assert joined(to_segments(REC_IN, "with_input")) == expected


def test_conversational():
    assert joined(to_segments(REC, "conversational")) == "Human: Name a colour.\n\nAssistant: Blue."
    assert to_segments(REC, "conversational")[1] == ("Blue.", True)


def test_alpaca():
    assert joined(to_segments(REC, "alpaca")) == (
        ALPACA_PREAMBLE + "\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue."
    )
    assert ALPACA_PREAMBLE == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    )
    assert joined(to_segments(REC_IN, "alpaca")).startswith(ALPACA_PREAMBLE_WITH_INPUT + "\n\n### Instruction:\n")


def test_conversational_multi_turn_trains_every_assistant_turn():
    rec = {"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."},
    ]}
    assert to_segments(rec, "conversational") == [
        ("Human: Hi\n\nAssistant: ", False), ("Hello!", True),
        ("\n\nHuman: Bye\n\nAssistant: ", False), ("Goodbye.", True),
    ]


def test_multi_turn_with_basic_template_is_refused():
    rec = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    with pytest.raises(ValueError, match="multi-turn"):
        to_segments(rec, "basic")


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown template 'vicuna'"):
        check_template("vicuna")


def test_chat_template_segments(tokenizer):
    segs = to_segments(REC, "chat", tokenizer)
    # SmolLM2's template: default system turn, then the user turn, then the assistant turn ending in <|im_end|>
    assert segs == [
        ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
         "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", False),
        ("Blue.<|im_end|>", True),
    ]


def test_chat_template_multi_turn(tokenizer):
    rec = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."},
    ]}
    segs = to_segments(rec, "chat", tokenizer)
    assert [s for s, train in segs if train] == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]
    assert segs[2] == ("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", False)
    assert joined(segs) == tokenizer.apply_chat_template(rec["messages"], tokenize=False).rstrip("\n")
