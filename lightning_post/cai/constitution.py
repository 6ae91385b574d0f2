"""A constitution (written principles) and the chat prompts of the Constitutional AI loop (Bai et al. 2022).

A constitution file is YAML (the bundled default: five principles in English and Korean, see
``lightning_post/resources/constitution.yaml``) or the paper's JSON of critique/revision requests
(``{name: {"prompt": ["...CritiqueRequest: ...Critique:"], "edit_request": "...RevisionRequest: ...Revision:"}}``).

Every prompt is a list of chat messages, so it is rendered by the model's own chat template:

>>> p = Principle("harm", "Avoid harm.", "Is it harmful?", "Rewrite it harmlessly.", "Which is less harmful?")
>>> [m["role"] for m in revision_messages([{"role": "user", "content": "Hi"}], "Hello", p, "It is fine.")]
['user', 'assistant', 'user', 'assistant', 'user']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning_post.records.files import DataError, read_text

Messages = list[dict[str, str]]

LANGUAGE_FIELDS = ("revise_question", "answer_yes", "answer_no", "human", "assistant", "feedback_template",
                   "answer_prefix")
PRINCIPLE_FIELDS = ("statement", "critique_request", "revision_request", "comparison")
# the paper's JSON has no language block and no comparison question: these English defaults fill them
_ENGLISH = {
    "revise_question": "Given this critique, does the response need to be revised? Answer Yes or No.",
    "answer_yes": "Yes", "answer_no": "No", "human": "Human", "assistant": "Assistant",
    "feedback_template": "Consider the following conversation between a human and an assistant:\n\n{conversation}"
                         "\n\n{question}\n(A) {a}\n(B) {b}\n\nAnswer with (A) or (B).",
    "answer_prefix": "The answer is: (",
}
_PAPER_COMPARISON = "Which of these assistant responses is less harmful?"


def default_constitution_file() -> str:
    return str(resources.files("lightning_post") / "resources" / "constitution.yaml")


@dataclass(frozen=True)
class Principle:
    name: str
    statement: str
    critique_request: str
    revision_request: str
    comparison: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    language: str
    revise_question: str
    answer_yes: str
    answer_no: str
    human: str
    assistant: str
    feedback_template: str
    answer_prefix: str

    def __len__(self) -> int:
        return len(self.principles)

    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(f"no principle {name!r}; the constitution has {[p.name for p in self.principles]}")


def _text(block: Any, field: str, where: str) -> str:
    if not isinstance(block, dict):
        raise DataError(where, None, "must be a mapping")
    value = block.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, field, "is missing or empty (a non-empty string is needed)")
    return value


def _paper_request(text: str, label: str) -> str:
    """``"\\n\\nCritiqueRequest: Identify ...\\n\\nCritique:"`` -> ``"Identify ..."``."""
    text = text.strip()
    head, tail = f"{label}Request:", f"{label}:"
    if text.startswith(head):
        text = text[len(head):]
    if text.endswith(tail):
        text = text[: -len(tail)]
    return text.strip()


def load_constitution(path: Optional[str] = None, language: str = "en") -> Constitution:
    """Load a constitution (``None`` = the bundled default) in ``language``; a bad entry names its file and field."""
    path = path or default_constitution_file()
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"constitution file {path!r} does not exist")
    text = read_text(file)  # names the file when it is not UTF-8
    if not text.strip():
        raise DataError(str(file), None, "is empty")
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise DataError(str(file), None, f"is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {e}") from None
    if isinstance(data, dict) and "principles" not in data and all(
            isinstance(v, dict) and "edit_request" in v for v in data.values()):
        return _load_paper(data, str(file), language)
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        raise DataError(str(file), "principles", "must be a non-empty list")
    languages = data.get("languages") or {}
    if language not in languages:
        raise DataError(str(file), f"languages.{language}", f"is missing (the file has {sorted(languages)})")
    lang = {f: _text(languages[language], f, f"{file}: languages.{language}") for f in LANGUAGE_FIELDS}
    principles = []
    for i, entry in enumerate(data["principles"]):
        where = f"{file}: principles[{i}]"
        name = _text(entry, "name", where)
        if language not in entry:
            raise DataError(where, language, f"principle {name!r} has no {language!r} text")
        block = entry[language]
        principles.append(Principle(name, *(_text(block, f, f"{where}.{language}") for f in PRINCIPLE_FIELDS)))
    _check_template(lang["feedback_template"], f"{file}: languages.{language}")
    return Constitution(tuple(principles), language, **lang)


def _load_paper(data: dict, where: str, language: str) -> Constitution:
    if language != "en":
        raise DataError(where, None, f"the paper's constitution is English only, asked for {language!r}")
    principles = []
    for name, entry in data.items():
        requests = entry.get("prompt")
        critique = requests[0] if isinstance(requests, list) and requests else requests
        if not isinstance(critique, str) or not isinstance(entry.get("edit_request"), str):
            raise DataError(where, name, "needs 'prompt' (a critique request) and 'edit_request' (a revision request)")
        principles.append(Principle(name, name, _paper_request(critique, "Critique"),
                                    _paper_request(entry["edit_request"], "Revision"), _PAPER_COMPARISON))
    return Constitution(tuple(principles), "en", **_ENGLISH)


_PAPER_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")
_PAPER_ROLES = {"Human": "user", "Assistant": "assistant", "CritiqueRequest": "user", "Critique": "assistant",
                "RevisionRequest": "user", "Revision": "assistant"}


def parse_few_shot(text: str) -> Messages:
    """One of the paper's few-shot demonstrations (``Human: / Assistant: / CritiqueRequest: / Critique: /
    RevisionRequest: / Revision:`` turns) as chat messages: requests are user turns, critiques and revisions
    assistant turns; a trailing empty turn is dropped.

    >>> parse_few_shot("\\n\\nHuman: Hi\\n\\nAssistant: Go away.\\n\\nCritiqueRequest: Rude?\\n\\nCritique: Yes."
    ...                "\\n\\nRevisionRequest: Fix it.\\n\\nRevision: Hello!\\n\\nHuman:")[-2:]
    [{'role': 'user', 'content': 'Fix it.'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    parts = _PAPER_TURN.split(text)
    messages = [{"role": _PAPER_ROLES[label], "content": body.strip()} for label, body in zip(parts[1::2], parts[2::2])
                if body.strip()]
    return messages


def load_few_shot(path: str, examples: Optional[int] = None) -> Messages:
    """Few-shot demonstrations of critique and revision, as one message list to put before a conversation: the
    paper's JSON (a list of ``Human: ... Revision: ...`` texts) or a JSON list of message lists. ``examples`` keeps
    the first N."""
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"few-shot file {path!r} does not exist")
    try:
        data = json.loads(read_text(file))
    except json.JSONDecodeError as e:
        raise DataError(str(file), None, f"is not valid JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise DataError(str(file), None, "must be a non-empty list of demonstrations")
    out: Messages = []
    for i, demo in enumerate(data[:examples]):
        messages = parse_few_shot(demo) if isinstance(demo, str) else demo
        if not isinstance(messages, list) or len(messages) < 2 or any(
                not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or
                not isinstance(m.get("content"), str) for m in messages):
            raise DataError(str(file), f"[{i}]", "must be a demonstration text or a list of {role, content} messages")
        if messages[0]["role"] != "user" or messages[-1]["role"] != "assistant":
            raise DataError(str(file), f"[{i}]", "must start with a user turn and end with an assistant turn")
        out += messages
    return out


def _check_template(template: str, where: str) -> None:
    try:
        template.format(conversation="", question="", a="", b="")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(where, "feedback_template", f"has a bad placeholder ({e}); use {{conversation}}, "
                        "{question}, {a} and {b}") from None


# ---- prompt builders: pure functions, messages in, messages out --------------------------------------------------
def critique_messages(prompt: Messages, answer: str, principle: Principle, demos: Messages = ()) -> Messages:
    """Few-shot ``demos`` (if any), the conversation, the answer, then the critique request (the model's reply is the
    critique)."""
    return [*demos, *prompt, {"role": "assistant", "content": answer},
            {"role": "user", "content": principle.critique_request}]


def revise_question_messages(prompt: Messages, answer: str, principle: Principle, critique: str,
                             constitution: Constitution, demos: Messages = ()) -> Messages:
    """After the critique, the explicit yes/no question whether the answer needs a revision."""
    return [*critique_messages(prompt, answer, principle, demos), {"role": "assistant", "content": critique},
            {"role": "user", "content": constitution.revise_question}]


def revision_messages(prompt: Messages, answer: str, principle: Principle, critique: str,
                      demos: Messages = ()) -> Messages:
    """After the critique, the revision request (the model's reply is the revised answer)."""
    return [*critique_messages(prompt, answer, principle, demos), {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision_request}]


def render_conversation(prompt: Messages, constitution: Constitution) -> str:
    """``Human: ...\\n\\nAssistant: ...`` with the language's speaker names (system turns dropped)."""
    names = {"user": constitution.human, "assistant": constitution.assistant}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in prompt if m["role"] in names)


def feedback_messages(prompt: Messages, a: str, b: str, principle: Principle, constitution: Constitution) -> Messages:
    """One user turn asking which of two answers (A) or (B) better follows ``principle``; the model's reply starts
    with ``constitution.answer_prefix`` and the next token is read as its choice."""
    return pairwise_messages(prompt, a, b, principle.comparison, constitution)


def pairwise_messages(prompt: Messages, a: str, b: str, question: str, constitution: Constitution) -> Messages:
    """The multiple-choice question ``question`` about answers (A) ``a`` and (B) ``b`` to the conversation ``prompt``,
    in the layout of ``constitution.feedback_template`` (also the LLM-as-judge prompt)."""
    text = constitution.feedback_template.format(conversation=render_conversation(prompt, constitution),
                                                 question=question, a=a, b=b)
    return [{"role": "user", "content": text}]
