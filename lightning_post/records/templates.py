"""Prompt templates: turn a validated record into text segments, each marked as trained on or not.

A *segment list* is ``[(text, is_response), ...]``; concatenated, the texts give exactly the training string.
Only ``is_response`` segments receive a loss. Examples::

    >>> to_segments({"instruction": "Hi", "input": "", "response": "Hello"}, "basic")
    [('### Instruction:\\nHi\\n\\n### Response:\\n', False), ('Hello', True)]
    >>> to_segments({"instruction": "Sum", "input": "1 2", "response": "3"}, "basic")[0][0]
    '### Instruction:\\nSum\\n\\n### Input:\\n1 2\\n\\n### Response:\\n'
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_post.errors import UserError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

#: name -> (prompt layout without input, prompt layout with input). The response follows the prompt directly.
PROMPT_LAYOUTS: dict[str, tuple[str, str]] = {
    "basic": (
        "### Instruction:\n{instruction}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    ),
    "with_input": (
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    ),
    "conversational": (
        "Human: {instruction}\n\nAssistant: ",
        "Human: {instruction}\n\n{input}\n\nAssistant: ",
    ),
    "alpaca": (
        ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        ALPACA_PREAMBLE_WITH_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    ),
    # prompt and response concatenated verbatim (for data that is already formatted)
    "raw": ("{instruction}", "{instruction}{input}"),
}

#: every template name accepted in YAML: ``chat`` (the tokenizer's chat template) plus the named layouts.
TEMPLATES = ("chat", *PROMPT_LAYOUTS)


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise UserError(f"unknown template {name!r}; choose one of {list(TEMPLATES)}")
    return name


def format_prompt(instruction: str, input: str, template: str) -> str:
    """The prompt text of a named (non-chat) template; ``with_input`` layout is used when ``input`` is non-empty."""
    plain, with_input = PROMPT_LAYOUTS[check_template(template)]
    layout = with_input if input else plain
    return layout.format(instruction=instruction, input=input)


def _single_turn(record: dict[str, Any]) -> tuple[str, str, str]:
    """(instruction, input, response) of a single-turn record or a one-exchange conversation."""
    if "messages" not in record:
        return record["instruction"], record.get("input") or "", record["response"]
    turns = [m for m in record["messages"] if m["role"] != "system"]
    if len(turns) != 2 or turns[0]["role"] != "user" or turns[1]["role"] != "assistant":
        raise UserError("multi-turn conversations need template 'chat' or 'conversational'")
    return turns[0]["content"], "", turns[1]["content"]


def _conversational_segments(messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """``Human: ...\\n\\nAssistant: ...`` turns; every assistant reply is a response segment."""
    segments: list[tuple[str, bool]] = []
    prompt = ""
    for m in messages:
        if m["role"] == "system":
            prompt += m["content"] + "\n\n"
        elif m["role"] == "user":
            prompt += ("\n\n" if segments else "") + "Human: " + m["content"] + "\n\nAssistant: "
        else:
            segments += [(prompt, False), (m["content"], True)]
            prompt = ""
    return segments


def chat_segments(messages: list[dict[str, str]], tokenizer, eos_token: Optional[str]) -> list[tuple[str, bool]]:
    """Segments from the tokenizer's chat template; every assistant turn is trained on.

    The reply segment of each assistant turn runs up to and including the template's end-of-turn token
    (``eos_token``); whatever the template writes after it (SmolLM2: a newline) belongs to the next prompt, and
    after the last turn it is dropped, so the sequence ends in EOS exactly once.
    """
    segments: list[tuple[str, bool]] = []
    done = ""  # text already covered by segments
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise UserError("the tokenizer's chat template is not prefix-stable; choose a named template instead")
        reply = full[len(prompt):]
        end = reply.rfind(eos_token) if eos_token else -1
        reply = reply[: end + len(eos_token)] if end >= 0 else reply
        segments += [(prompt[len(done):], False), (reply, True)]
        done = prompt + reply
    return segments


def to_segments(record: dict[str, Any], template: str, tokenizer=None) -> list[tuple[str, bool]]:
    """Format one validated record (``instruction/input/response`` or ``messages``) with ``template``."""
    if template == "chat":
        messages = record.get("messages")
        if messages is None:
            user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["response"]}]
        return chat_segments(messages, tokenizer, getattr(tokenizer, "eos_token", None))
    if template == "conversational" and "messages" in record:
        return _conversational_segments(record["messages"])
    instruction, input, response = _single_turn(record)
    return [(format_prompt(instruction, input, template), False), (response, True)]


def prompt_text(text: str, template: str, tokenizer=None) -> str:
    """The generation prompt for a bare user request (used for sample generations and evaluation)."""
    if template == "chat":
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return format_prompt(text, "", template)
