"""The bundled datasets load, have the promised coverage, and hold the design document's examples."""

import json
from collections import Counter
from importlib import resources

from lightning_post.records.files import default_instruction_file
from lightning_post.records.instruction import load_instruction_records


def test_bundled_instructions():
    records = load_instruction_records([default_instruction_file()])
    assert len(records) >= 100
    raw = [json.loads(line) for line in open(default_instruction_file(), encoding="utf-8")]
    assert Counter(r["language"] for r in raw) == {"ko": 60, "en": 60}
    assert set(Counter(r["category"] for r in raw).values()) == {20}
    instructions = {(r["instruction"], r["input"]) for r in raw}
    assert ("Python으로 피보나치 수열을 구하는 함수를 작성해주세요.", "") in instructions
    assert ("다음 문장의 감정을 분석해주세요.", "오늘 날씨가 너무 좋아서 기분이 좋습니다.") in instructions
    assert any(r["instruction"] == "다음 텍스트를 요약해주세요." and r["input"].startswith("인공지능") for r in raw)


def test_bundled_preferences():
    path = resources.files("lightning_post") / "resources" / "preferences.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 120
    assert Counter((r["category"], r["language"]) for r in rows) == {
        (c, lang): 20 for c in ("helpfulness", "harmlessness", "honesty") for lang in ("en", "ko")
    }
    assert all(r["prompt"].strip() and r["chosen"].strip() and r["rejected"].strip() for r in rows)
    assert not any(r["chosen"] == r["rejected"] for r in rows)
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows)
    assert 40 <= longer <= 80  # length alone does not give the label away


def test_borderline_training_prompts_are_not_the_over_refusal_probe():
    """The jailbreak-defense data trains on the borderline prompts; the over-refusal probe measures on the harmless
    prompts. So that the probe measures generalisation, no training prompt uses a probe prompt's alarming word
    (kill, shoot, bomb, ...) or is one; neither file repeats itself."""
    import re

    from lightning_post.safety.defense import RESOURCES

    def prompts(name):
        return [json.loads(line)["prompt"] for line in (RESOURCES / name).read_text(encoding="utf-8").splitlines()]

    train, probe = prompts("borderline_prompts.jsonl"), prompts("harmless_prompts.jsonl")
    assert len(train) == len(set(train)) == 48 and len(probe) == len(set(probe)) == 24
    alarming = re.compile(r"\b(kill|shoot|blow|knife|beat|chemical|weed|bomb|crack|steal|attack|hack|virus|break into|"
                          r"collapse|dispos|execut|strangl|smash|lock|godfather|terminat|explo)", re.I)
    assert all(alarming.search(p) for p in probe)  # every probe prompt has one of these words
    assert [p for p in train if alarming.search(p)] == []
    assert not set(train) & set(probe)
