"""Segments -> token ids and labels, with the BOS/EOS policy and truncation in one place.

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

from lightning_post.errors import UserError
from lightning_post.data.templates import prompt_text

IGNORE_INDEX = -100
TRUNCATION = ("right", "drop")


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenizeStats:
    """Counts reported to the log and to MLflow (``data/<split>_examples``, ``..._truncated``, ``..._dropped``)."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    response_tokens: int = 0
    dropped_where: list[int] = field(default_factory=list)

    def as_metrics(self, split: str) -> dict[str, float]:
        return {
            f"data/{split}_examples": self.examples,
            f"data/{split}_truncated": self.truncated,
            f"data/{split}_dropped": self.dropped,
            f"data/{split}_tokens": self.tokens,
            f"data/{split}_response_tokens": self.response_tokens,
        }


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
