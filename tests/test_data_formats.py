"""docs/data_formats.md matches the code: every example record on the page is accepted by the real normaliser or
loader of its kind, every kind the page names has examples, every documented layout variant has one, and the
normalised values are the ones the page describes.

Examples are fenced blocks marked ```json <kind>``` (one JSON object per line; for ``constitution`` and ``few_shot``
the block is one whole file), ```yaml constitution``` or ```csv crows_pairs```. Nothing here loads a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import yaml

from lightning_post.records.files import DataError

DOC = Path(__file__).resolve().parents[1] / "docs" / "data_formats.md"
FENCE = re.compile(r"^```([A-Za-z]+)[ \t]+(\S+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
HANGUL = re.compile(r"[\uac00-\ud7a3]")


@dataclass
class Block:
    lang: str
    kind: str
    body: str
    line: int  # line of the page where the block's first record is

    def where(self, i: int = 0) -> str:
        return f"{DOC.name}:{self.line + i}"

    def records(self) -> list[tuple[str, Any]]:
        """``(page:line, record)`` of each non-empty line of a JSON Lines block."""
        out = []
        for i, line in enumerate(self.body.splitlines()):
            if line.strip():
                try:
                    out.append((self.where(i), json.loads(line)))
                except json.JSONDecodeError as e:
                    pytest.fail(f"{self.where(i)}: the example is not valid JSON ({e})")
        return out


def page_blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    return [Block(m.group(1), m.group(2), m.group(3), text[: m.start(3)].count("\n") + 1)
            for m in FENCE.finditer(text)]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- each kind: how its examples are read, and what the normalised values must be ------------------------------
# A checker gets the kind's blocks and a temporary folder and returns [(page:line, record, normalised)], one per
# example, having passed every example through the package's own function.

def per_record(normalize: Callable[[Any, str], Any]):
    def check(blocks: list[Block], tmp_path: Path):
        assert all(b.lang == "json" for b in blocks)
        out = []
        for block in blocks:
            for where, record in block.records():
                try:
                    out.append((where, record, normalize(record, where)))
                except DataError as e:
                    pytest.fail(f"the page shows a record the code refuses: {e}")
        return out
    return check


def per_file(suffix: str, load: Callable[[str, list], list]):
    """Write each JSON Lines block to a file and read it with the kind's loader (which names the failing line)."""
    def check(blocks: list[Block], tmp_path: Path):
        assert all(b.lang == "json" for b in blocks)
        out = []
        for n, block in enumerate(blocks):
            located = block.records()
            path = write(tmp_path, f"block{n}{suffix}", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                  for _, r in located))
            try:
                results = load(path, [r for _, r in located])
            except DataError as e:
                pytest.fail(f"{block.where()}: the code refuses the block's records: {e}")
            assert len(results) == len(located), f"{block.where()}: {len(located)} records, {len(results)} read"
            out += [(w, r, res) for (w, r), res in zip(located, results)]
        return out
    return check


def load_responses(path, records):
    from lightning_post.quality.collect import load_responses as load
    return load([path])


def load_verdicts(path, records):
    from lightning_post.commands.abtest import ABTest
    return ABTest._annotations(SimpleNamespace(annotations=path), len(records))


def load_mc(path, records):
    from lightning_post.evaluation.knowledge import load_mc as load
    return load(path)


def load_seeds(path, records):
    from lightning_post.safety.redteam import load_seeds as load
    return load(path, None)


def load_redteam_set(path, records):
    from lightning_post.safety.defense import load_redteam_set as load
    return load(path)


def load_refusals(path, records):
    from lightning_post.safety.defense import load_refusals as load
    return load(path)


def check_constitution(blocks: list[Block], tmp_path: Path):
    from lightning_post.cai.constitution import load_constitution

    out = []
    for n, block in enumerate(blocks):
        if block.lang == "yaml":
            path = write(tmp_path, f"constitution{n}.yaml", block.body)
            languages = sorted(yaml.safe_load(block.body)["languages"])
        else:
            assert block.lang == "json"
            path = write(tmp_path, f"constitution{n}.json", block.body)
            languages = ["en"]  # the paper's JSON is English only
        for language in languages:
            try:
                out.append((block.where(), (block.lang, language), load_constitution(path, language)))
            except DataError as e:
                pytest.fail(f"{block.where()}: the code refuses the constitution ({language}): {e}")
    return out


def check_few_shot(blocks: list[Block], tmp_path: Path):
    from lightning_post.cai.constitution import load_few_shot

    out = []
    for n, block in enumerate(blocks):
        assert block.lang == "json"
        path = write(tmp_path, f"few_shot{n}.json", block.body)
        try:
            out.append((block.where(), json.loads(block.body), load_few_shot(path)))
        except DataError as e:
            pytest.fail(f"{block.where()}: the code refuses the demonstrations: {e}")
    return out


def check_crows_pairs(blocks: list[Block], tmp_path: Path):
    from lightning_post.evaluation.safety import read_crows_pairs

    out = []
    for n, block in enumerate(blocks):
        assert block.lang == "csv"
        path = write(tmp_path, f"crows{n}.csv", block.body)
        try:
            rows = read_crows_pairs(path)
        except (DataError, KeyError) as e:
            pytest.fail(f"{block.where()}: the code refuses the CSV: {e!r}")
        assert len(rows) == len(block.body.strip().splitlines()) - 1  # every row after the header
        out += [(block.where(i + 1), None, row) for i, row in enumerate(rows)]
    return out


def _normalizers() -> dict[str, Callable]:
    """The checker of each kind: every normaliser of the records registry (``NORMALIZERS``) on each example record,
    and the loaders of the kinds read whole files."""
    from lightning_post.records import NORMALIZERS

    return {
        **{kind: per_record(normalize) for kind, normalize in NORMALIZERS.items()},
        "responses": per_file(".jsonl", load_responses),
        "verdict": per_file(".jsonl", load_verdicts),
        "multiple_choice": per_file(".jsonl", load_mc),
        "redteam_seed": per_file(".jsonl", load_seeds),
        "redteam_set": per_file(".jsonl", load_redteam_set),
        "refusal": per_file(".jsonl", load_refusals),
        "constitution": check_constitution,
        "few_shot": check_few_shot,
        "crows_pairs": check_crows_pairs,
    }


KINDS = ("instruction", "preference", "scoring", "prompt", "responses", "pair", "annotation", "verdict", "unpaired",
         "feedback", "multiple_choice", "redteam_seed", "redteam_set", "refusal", "constitution", "few_shot",
         "crows_pairs")
REQUIRED_KINDS = {"instruction", "preference", "prompt", "unpaired", "feedback", "annotation", "multiple_choice"}
#: kinds whose examples carry no natural-language text of their own
NO_KOREAN = {"verdict", "crows_pairs"}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- layout variants and the values each must normalise to -------------------------------------------------------
def instruction_layout(rec: dict) -> str:
    if "messages" in rec:
        return "messages"
    if "prompt" in rec and "instruction" not in rec:
        return "prompt/completion" if "completion" in rec else "prompt/response"
    return "instruction/response" if "response" in rec else "instruction/input/output"


def expect_instruction(rec: dict, out: dict) -> str:
    layout = instruction_layout(rec)
    if layout == "messages":
        assert out["messages"] == [{"role": m["role"], "content": m["content"].strip() if m["role"] == "assistant"
                                    else m["content"]} for m in rec["messages"]]
    elif layout.startswith("prompt/"):
        answer = "completion" if layout == "prompt/completion" else "response"
        assert out == {"instruction": rec["prompt"], "input": "", "response": rec[answer].strip()}
    else:
        answer = "response" if layout == "instruction/response" else "output"
        assert out == {"instruction": rec["instruction"], "input": rec.get("input", ""),
                       "response": rec[answer].strip()}
    return layout


def preference_layout(rec: dict) -> str:
    if "prompt" in rec:
        return "explicit prompt (text)" if isinstance(rec["prompt"], str) else "explicit prompt (messages)"
    return "conversations" if isinstance(rec["chosen"], list) else "HH-RLHF dialogue"


def reply_text(value) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def expect_preference(rec: dict, out: dict) -> str:
    layout = preference_layout(rec)
    if layout == "explicit prompt (text)":
        assert out["prompt"] == user(rec["prompt"]) and out["raw_prompt"] == rec["prompt"]
    elif layout == "explicit prompt (messages)":
        assert out["prompt"] == rec["prompt"]
    elif layout == "conversations":
        assert out["prompt"] == rec["chosen"][:-1] == rec["rejected"][:-1]
    else:
        assert out["raw_prompt"] + out["chosen"] == rec["chosen"]
        assert out["raw_prompt"] + out["rejected"] == rec["rejected"]
        assert out["raw_prompt"].endswith("\n\nAssistant:") and out["prompt"][-1]["role"] == "user"
    if layout != "HH-RLHF dialogue":  # replies are kept as written
        assert (out["chosen"], out["rejected"]) == (reply_text(rec["chosen"]), reply_text(rec["rejected"]))
    for name in ("margin", "weight", "label"):
        assert out[name] == (None if name not in rec else float(rec[name]))
    return layout


def scoring_layout(rec: dict) -> str:
    return "pair" if "chosen" in rec else "messages" if "messages" in rec else "prompt/response"


def expect_scoring(rec: dict, out: dict) -> str:
    layout = scoring_layout(rec)
    assert out["record"] is rec
    if layout == "pair":
        assert out["pair"]["chosen"] == rec["chosen"] and out["pair"]["rejected"] == rec["rejected"]
    elif layout == "messages":
        assert out["single"]["chosen"] == rec["messages"][-1]["content"]
        assert out["single"]["prompt"] == rec["messages"][:-1]
    else:
        assert out["single"]["chosen"] == rec["response"]
    return layout


def prompt_layout(rec: dict) -> str:
    if "chosen" in rec or "rejected" in rec:
        return "pair"
    if "messages" in rec:
        return "messages"
    if "prompt" in rec:
        return "prompt messages" if isinstance(rec["prompt"], list) else "prompt"
    return "instruction"


def expect_prompt(rec: dict, out: dict) -> str:
    from lightning_post.records.preference import normalize_preference_record

    layout = prompt_layout(rec)
    assert out["prompt"][-1]["role"] == "user"
    if layout == "pair":
        assert out["prompt"] == normalize_preference_record(rec, "x")["prompt"]
    elif layout == "messages":
        last_user = max(i for i, m in enumerate(rec["messages"]) if m["role"] == "user")
        assert out["prompt"] == rec["messages"][: last_user + 1]
    elif layout == "prompt messages":
        assert out["prompt"] == rec["prompt"]
    elif layout == "prompt":
        assert out["prompt"] == user(rec["prompt"])
        assert out["raw_prompt"] == f"\n\nHuman: {rec['prompt']}\n\nAssistant:"
    else:
        extra = rec.get("input")
        assert out["prompt"] == user(f"{rec['instruction']}\n\n{extra}" if extra else rec["instruction"])
    return layout


def expect_responses(rec: dict, out: dict) -> str:
    assert out["response"] == rec["response"].strip()
    if "model" in rec:
        assert out["model"] == rec["model"]
    else:  # the file name without its extensions
        assert out["model"].startswith("block") and "." not in out["model"]
    return "prompt layout + response"


def expect_pair(rec: dict, out: dict) -> str:
    assert (out["response_a"], out["response_b"]) == (rec["response_a"], rec["response_b"])
    assert out["prompt"] == (user(rec["prompt"]) if isinstance(rec["prompt"], str) else rec["prompt"])
    if "pair_id" in rec:
        assert out["pair_id"] == rec["pair_id"]
    elif "model_a" in rec:
        assert out["pair_id"] == f"{out['prompt_id']}:{rec['model_a']}|{rec['model_b']}"
    return "pair"


def expect_annotation(rec: dict, out: dict) -> str:
    expect_pair(rec, out)
    assert out["overall"] == rec["overall"] and out["annotator"] == rec["annotator"]
    assert out["criteria"] == rec.get("criteria", {}) and out["confidence"] == rec.get("confidence")
    return f"overall {rec['overall']}"


def expect_verdict(rec: dict, out: str) -> str:
    assert out == rec["verdict"]
    return rec["verdict"]


def expect_unpaired(rec: dict, out: dict) -> str:
    assert out["label"] is rec["label"]
    assert out["completion"] == reply_text(rec["completion"])
    return "prompt messages" if isinstance(rec["prompt"], list) else "prompt text"


def expect_feedback(rec: dict, out: dict) -> str:
    for name, value in rec.items():
        assert out[name] == value, name
    assert all(out[name] is None for name in set(out) - set(rec))
    signals = [s for s in ("thumbs", "ratings", "comparison") if s in rec]
    assert signals
    return "+".join(signals)


def expect_multiple_choice(rec: dict, out: dict) -> str:
    answer = rec["answer"]
    expected = "ABCDEFGHIJ".index(answer.upper()) if isinstance(answer, str) else answer
    assert out["answer"] == expected and out["choices"] == rec["choices"]
    assert out["subject"] == rec.get("subject", "all")
    return "answer letter" if isinstance(answer, str) else "answer index"


def expect_redteam_seed(rec: dict, out: dict) -> str:
    # the documented layout, not the fallback (which drops topics): each seed is read as written
    assert out == {"prompt": rec["prompt"].strip(), "topic": str(rec.get("topic", "-"))}
    return "prompt + topic"


def expect_redteam_set(rec: dict, out: tuple) -> str:
    assert out == (rec["prompt"], rec.get("seed", ""))
    return "redteam_set"


def expect_refusal(rec: dict, out: str) -> str:
    assert out == rec["response"].strip()
    return "response"


def expect_constitution(what: tuple, out) -> str:
    lang, language = what
    assert out.language == language and len(out) >= 1
    return lang


def expect_few_shot(demos: list, out: list) -> str:
    assert out[0]["role"] == "user" and out[-1]["role"] == "assistant"
    assert {m["role"] for m in out} == {"user", "assistant"}
    kinds = {"paper text" if isinstance(d, str) else "messages" for d in demos}
    return "+".join(sorted(kinds))


def expect_crows_pairs(_, row: dict) -> str:
    assert set(row) == {"sent_more", "sent_less", "bias_type", "stereo_antistereo"}
    return row["stereo_antistereo"]


EXPECT = {kind: globals()[f"expect_{kind}"] for kind in KINDS}
#: every layout variant the page documents for a kind must have an example
VARIANTS = {
    "instruction": {"instruction/response", "instruction/input/output", "prompt/completion", "prompt/response",
                    "messages"},
    "preference": {"explicit prompt (text)", "explicit prompt (messages)", "conversations", "HH-RLHF dialogue"},
    "scoring": {"pair", "prompt/response", "messages"},
    "prompt": {"pair", "messages", "prompt messages", "prompt", "instruction"},
    "unpaired": {"prompt text", "prompt messages"},
    "multiple_choice": {"answer index", "answer letter"},
    "constitution": {"yaml", "json"},
    "few_shot": {"messages+paper text"},
}


# ---- the tests ---------------------------------------------------------------------------------------------------
def test_the_page_covers_exactly_the_known_kinds():
    blocks = page_blocks()
    found = {b.kind for b in blocks}
    assert found == set(KINDS), (f"kinds on the page without a checker here: {sorted(found - set(KINDS))}; "
                                 f"kinds with no example on the page: {sorted(set(KINDS) - found)}")
    assert REQUIRED_KINDS <= found
    assert set(_normalizers()) == set(KINDS) == set(EXPECT)
    headings = set(re.findall(r"^## (\S+)$", DOC.read_text(encoding="utf-8"), re.M))
    assert set(KINDS) <= headings, f"kinds without a section: {sorted(set(KINDS) - headings)}"
    for b in blocks:
        assert b.lang in ("json", "yaml", "csv"), f"{b.where()}: unknown block language {b.lang!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_example_is_accepted_as_documented(kind, tmp_path):
    blocks = [b for b in page_blocks() if b.kind == kind]
    assert blocks, f"the page has no ```json {kind}``` example"
    results = _normalizers()[kind](blocks, tmp_path)
    assert results, f"the {kind} blocks hold no example"
    layouts = set()
    for where, record, out in results:
        try:
            layouts.add(EXPECT[kind](record, out))
        except AssertionError as e:
            raise AssertionError(f"{where}: the {kind} example does not normalise as the page says: {e}") from e
    missing = VARIANTS.get(kind, set()) - layouts
    assert not missing, f"documented {kind} layouts without an example: {sorted(missing)}"
    if kind not in NO_KOREAN:
        assert any(HANGUL.search(b.body) for b in blocks), f"no Korean {kind} example"


def test_concrete_normalised_values():
    """A few values spelt out, so a change of what a layout means shows up by name."""
    from lightning_post.records.prompts import normalize_prompt_record
    from lightning_post.records.instruction import normalize_instruction_record

    records = {json.dumps(r): r for b in page_blocks() if b.kind == "instruction" for _, r in b.records()}
    by_layout = {instruction_layout(r): r for r in records.values()}
    out = normalize_instruction_record(by_layout["prompt/response"], "doc")
    assert out == {"instruction": "Summarise in one sentence: The meeting was moved from Monday to Wednesday "
                                  "because the room was booked.",
                   "input": "", "response": "The meeting moved to Wednesday."}
    assert normalize_instruction_record(by_layout["instruction/input/output"], "doc")["response"] == "negative"
    assert normalize_prompt_record({"instruction": "Translate into Korean.", "input": "Good morning."},
                                   "doc")["prompt"] == user("Translate into Korean.\n\nGood morning.")


def test_a_refused_layout_fails_the_check(tmp_path):
    """The checker really refuses: a prompt given as a message list is not an instruction layout."""
    bad = Block("json", "instruction", json.dumps({"prompt": user("Hi"), "completion": "Hello"}) + "\n", 1)
    with pytest.raises(pytest.fail.Exception, match="field 'prompt': must be a string"):
        _normalizers()["instruction"]([bad], tmp_path)
