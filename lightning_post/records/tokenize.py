"""Segments -> token ids and labels, with the BOS/EOS policy and truncation in one place; the same for the two sides
of a preference pair and for a prompt alone.

Policy:

* Each segment is tokenised on its own with ``add_special_tokens=False`` and the ids are concatenated, so the
  prompt tokens are exactly those a user's prompt gets at generation time.
* BOS: prepended once when the tokenizer is configured to add one (``add_bos_token``) and the text does not start
  with it already (chat templates often write it themselves).
* EOS: every response segment ends with exactly one EOS: chat templates write their end-of-turn token (SmolLM2's
  EOS) themselves; for named templates the EOS id is appended unless the response text already ends with it.
* Labels: token ids inside response segments, ``-100`` (ignored) everywhere else.
* Truncation (``max_length``): ``right`` keeps the first ``max_length`` tokens (the end of the reply, and its EOS,
  may be cut); ``drop`` drops examples that do not fit. An example with no response token left is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from lightning_post.errors import UserError
from lightning_post.records.templates import prompt_text, to_segments

IGNORE_INDEX = -100
TRUNCATION = ("right", "drop")


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]


class SplitCounts:
    """Counts of one split, reported to MLflow as ``data/<split>_<name>`` (a data module's ``stats``)."""

    #: field -> its name in ``data/<split>_<name>``, in the order reported
    METRICS: ClassVar[dict[str, str]] = {}

    def as_metrics(self, split: str) -> dict[str, float]:
        return {f"data/{split}_{name}": getattr(self, f) for f, name in self.METRICS.items()}


@dataclass
class TokenizeStats(SplitCounts):
    """Counts reported to the log and to MLflow (``data/<split>_examples``, ``..._truncated``, ``..._dropped``)."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    response_tokens: int = 0
    dropped_where: list[int] = field(default_factory=list)

    METRICS = {"examples": "examples", "truncated": "truncated", "dropped": "dropped", "tokens": "tokens",
               "response_tokens": "response_tokens"}


def tokenize_segments(segments: list[tuple[str, bool]], tokenizer, template_is_chat: bool) -> Tokenized:
    """Token ids and labels for one formatted example (no truncation)."""
    ids: list[int] = []
    labels: list[int] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    first_text = segments[0][0] if segments else ""
    if (
        bos is not None
        and getattr(tokenizer, "add_bos_token", False)
        and not (tokenizer.bos_token and first_text.startswith(tokenizer.bos_token))
    ):
        ids.append(bos)
        labels.append(IGNORE_INDEX)
    for text, is_response in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if is_response and not template_is_chat and eos is not None and (not piece or piece[-1] != eos):
            piece = piece + [eos]
        ids += piece
        labels += piece if is_response else [IGNORE_INDEX] * len(piece)
    return Tokenized(ids, labels)


def truncate(example: Tokenized, max_length: int, policy: str) -> Tokenized | None:
    """Apply the truncation policy; ``None`` means drop the example."""
    if policy not in TRUNCATION:
        raise UserError(f"unknown truncation {policy!r}; choose one of {list(TRUNCATION)}")
    if len(example.input_ids) > max_length:
        if policy == "drop":
            return None
        example = Tokenized(example.input_ids[:max_length], example.labels[:max_length])
    # position 0 is never predicted, so a response needs a label after the first token
    if all(label == IGNORE_INDEX for label in example.labels[1:]):
        return None
    return example


def truncate_prompt_middle(example: Tokenized, max_length: int, keep_head: int = 16) -> Tokenized | None:
    """Fit an example into ``max_length`` by removing prompt tokens after its first ``keep_head`` (the template's
    header), so a long document loses its middle and the response stays whole; when the response alone is too
    long, cut from the right. ``None`` when no response token is left.

    >>> truncate_prompt_middle(Tokenized([1, 2, 3, 4, 5, 6], [-100, -100, -100, -100, 5, 6]), 4, keep_head=1)
    Tokenized(input_ids=[1, 4, 5, 6], labels=[-100, -100, 5, 6])
    """
    n = len(example.input_ids)
    if n > max_length:
        prompt = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), n)
        head, excess = min(keep_head, prompt // 2), n - max_length
        if prompt - head - excess >= 1:  # room in the prompt: drop its middle
            cut = slice(head, head + excess)
            ids, labels = list(example.input_ids), list(example.labels)
            del ids[cut], labels[cut]
            example = Tokenized(ids, labels)
    return truncate(example, max_length, "right")


def encode_prompt(text: str, template: str, tokenizer) -> list[int]:
    """Token ids of a generation prompt for a bare request, formatted and BOS-prefixed exactly like training."""
    formatted = prompt_text(text, template, tokenizer)
    ids = tokenizer(formatted, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and not formatted.startswith(tokenizer.bos_token):
        ids = [bos] + ids
    return ids


# ---- preference pairs and prompts ---------------------------------------------------------------------------------
def reply_segments(prompt: list[dict], raw_prompt: str, reply: str, template: str, tokenizer) -> tuple[str, str]:
    """(prompt text, reply text) of one side of a pair under ``template`` (the same templates as SFT).

    ``raw`` keeps the record's own text (HH-RLHF dialogues stay ``...\\n\\nAssistant: reply``); every other template
    formats the conversation and trains only its final assistant turn.
    """
    if template == "raw":
        return raw_prompt, reply
    segments = to_segments({"messages": prompt + [{"role": "assistant", "content": reply.strip()}]}, template, tokenizer)
    return "".join(text for text, _ in segments[:-1]), segments[-1][0]


def split_prompt_reply(example: Tokenized) -> tuple[list[int], list[int]]:
    """Split a tokenised example at its first labelled token into (prompt ids, reply ids)."""
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.input_ids[:first], example.input_ids[first:]


@dataclass
class PairStats(SplitCounts):
    """Counts reported to the log and to MLflow (``data/<split>_pairs``, ``..._prompt_truncated``, ...)."""

    pairs: int = 0
    prompt_truncated: int = 0
    reply_truncated: int = 0
    identical: int = 0
    dropped: int = 0
    tokens: int = 0
    identical_where: list[str] = field(default_factory=list)

    METRICS = {"pairs": "pairs", "prompt_truncated": "prompt_truncated", "reply_truncated": "reply_truncated",
               "identical": "identical_pairs", "dropped": "dropped", "tokens": "tokens"}


@dataclass
class PairExample:
    """One tokenised pair; ``chosen``/``rejected`` hold the full sequences with labels on the reply only."""

    chosen: Tokenized
    rejected: Tokenized
    margin: float = 0.0
    weight: float = 1.0
    index: int = 0
    label: float = 1.0


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int, min_prompt_length: int,
    bos_id: Optional[int] = None,
) -> tuple[list[int], list[int], list[int], bool, bool]:
    """Fit ``prompt + reply`` into ``max_length`` for both replies: the prompt is cut from the left first (keeping a
    leading BOS), down to ``min_prompt_length`` tokens; only then are the replies cut from the right.

    Returns ``(prompt, chosen, rejected, prompt_was_cut, a_reply_was_cut)``.

    >>> truncate_pair([1, 2, 3, 4, 5], [6, 7], [8], max_length=5, min_prompt_length=2)
    ([3, 4, 5], [6, 7], [8], True, False)
    >>> truncate_pair([1, 2, 3, 4, 5], [6, 7, 8, 9], [8], max_length=5, min_prompt_length=2)
    ([4, 5], [6, 7, 8], [8], True, True)
    """
    longest = max(len(chosen), len(rejected))
    prompt_cut = reply_cut = False
    if len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), min_prompt_length))
        if keep < len(prompt):
            keep_bos = bos_id is not None and prompt and prompt[0] == bos_id and keep > 1
            prompt = ([bos_id] + prompt[len(prompt) - keep + 1 :]) if keep_bos else prompt[len(prompt) - keep :]
            prompt_cut = True
        budget = max_length - len(prompt)
        if longest > budget:
            chosen, rejected = chosen[:budget], rejected[:budget]
            reply_cut = True
    return prompt, chosen, rejected, prompt_cut, reply_cut


def tokenize_pair(
    pair: dict, template: str, tokenizer, max_length: int, min_prompt_length: int, stats: PairStats, index: int = 0,
) -> PairExample:
    """Format, tokenise and truncate a normalised pair; the prompt ids are shared by both sides."""
    is_chat = template == "chat"
    sides = []
    for name in ("chosen", "rejected"):
        prompt_text, reply_text = reply_segments(pair["prompt"], pair["raw_prompt"], pair[name], template, tokenizer)
        sides.append(split_prompt_reply(tokenize_segments([(prompt_text, False), (reply_text, True)], tokenizer, is_chat)))
    (prompt, chosen), (prompt_r, rejected) = sides
    assert prompt == prompt_r, "the two sides of a pair must share their prompt tokens"
    prompt, chosen, rejected, p_cut, r_cut = truncate_pair(
        prompt, chosen, rejected, max_length, min_prompt_length, tokenizer.bos_token_id
    )
    stats.prompt_truncated += p_cut
    stats.reply_truncated += r_cut
    stats.tokens += 2 * len(prompt) + len(chosen) + len(rejected)
    masked = [IGNORE_INDEX] * len(prompt)
    return PairExample(
        chosen=Tokenized(prompt + chosen, masked + chosen),
        rejected=Tokenized(prompt + rejected, masked + rejected),
        margin=pair["margin"] or 0.0,
        weight=1.0 if pair["weight"] is None else pair["weight"],
        index=index,
        label=1.0 if pair.get("label") is None else pair["label"],
    )


def prompt_ids(prompt: list[dict], raw_prompt: str, template: str, tokenizer) -> list[int]:
    """Token ids that precede a reply under ``template``: the same ids the reply is appended to in SFT/DPO data."""
    if template == "raw":
        return encode_prompt(raw_prompt, "raw", tokenizer)
    prompt_text, reply_text = reply_segments(prompt, raw_prompt, "x", template, tokenizer)
    return split_prompt_reply(tokenize_segments([(prompt_text, False), (reply_text, True)], tokenizer,
                                                template == "chat"))[0]


def reply_ids(prompt: list[dict], raw_prompt: str, reply: str, template: str, tokenizer) -> list[int]:
    """Prompt and reply as one token sequence, formatted as in preference data (what a reward model was trained on)."""
    prompt_text, reply_text = reply_segments(prompt, raw_prompt, reply, template, tokenizer)
    return tokenize_segments([(prompt_text, False), (reply_text, True)], tokenizer, template == "chat").input_ids
