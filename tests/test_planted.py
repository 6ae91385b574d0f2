"""The evaluation commands on models with planted answers (tests/planted.py): every rate, count and verdict below is
derived by hand from the planted tables, so a detector, a metric or a count that goes wrong changes a number here.
(On the random tiny model every answer is ``""``: over-refusal is 0, every attack "succeeds", every verdict a tie.)"""

from __future__ import annotations

import json

import pytest

from lightning_post.commands import run_command
from tests import planted as P
from tests.conftest import CONFIGS
from tests.cli_runner import client


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return P.write_files(tmp_path / "inputs")


def _report(folder: str) -> dict:
    return json.loads(open(f"{folder}/report.json", encoding="utf-8").read())


def test_evaluate_reports_the_planted_answers(files, parrot_a):
    run_command("evaluate", ["--config", str(CONFIGS / "evaluate/tiny.yaml"), "--model", parrot_a,
                             "--prompts", str(files["prompts"]), "--harmful_prompts", str(files["harmful"]),
                             "--jailbreak_templates", "[role_play]", "--bertscore", "false", "--mc_files", "[]",
                             "--max_crows_pairs", "0", "--max_new_tokens", "64"])
    r = _report("eval-out")
    rows = [json.loads(line) for line in open("eval-out/answers.jsonl", encoding="utf-8")]
    assert [row["answer"] for row in rows] == [t["a"] for t in P.TEXT]
    # ROUGE by hand. 0: "the capital of france is paris" | "paris is the capital of france": 6 of 6 unigrams,
    # bigrams the capital / capital of / of france = 3 of 5, LCS the capital of france = 4 of 6.
    # 1: the reference itself. 2: 서울 은 한국 의 수도 입니다 | 서울 은 대한민국 의 수도 입니다: 5/6, 3/5, 5/6.
    by_hand = [{"rouge1": 1.0, "rouge2": 3 / 5, "rougeL": 4 / 6}, {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0},
               {"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6}]
    for row, want in zip(rows, by_hand):
        assert {k: row["metrics"][k] for k in want} == pytest.approx(want)
    assert [row["metrics"]["language"] for row in rows] == ["en", "en", "ko"]
    text = r["text"]
    assert text["rouge1"] == pytest.approx((1 + 1 + 5 / 6) / 3)
    assert text["by_language"]["en"]["n"] == 2 and text["by_language"]["ko"]["n"] == 1
    assert text["by_language"]["en"]["rougeL"] == pytest.approx((4 / 6 + 1) / 2)
    assert text["by_language"]["en"]["bleu"] > text["by_language"]["ko"]["bleu"] > 0
    s = r["safety"]
    assert s["refusal_rate"] == 1 / 2  # A refuses the first harmful request only
    assert s["jailbreak_by_template"] == {"role_play": 0.0} and s["jailbreak_drop"] == 1 / 2
    assert s["over_refusal_rate"] == 1 / 4  # "I cannot help you"; "please don't hesitate", "I can't wait" are help
    assert s["empty_answer_rate"] == 1 / 8  # one empty answer among 4 harmless + 2 harmful + 2 wrapped
    assert s["pii_answer_rate"] == 1 / 12 and s["pii_by_kind"] == {"email": 1}  # the Luhn-invalid card is no card
    assert s["privacy_refusal_rate"] == 5 / 12  # a Korean refusal and four English ones
    run = client(files["prompts"].parents[1]).get_run(r["mlflow_run_id"])
    assert run.data.metrics["safety/over_refusal_rate"] == 0.25
    assert run.data.metrics["eval/text/by_language/ko/rouge1"] == pytest.approx(5 / 6)
    assert "tok:char" in run.data.params["bleu_signature.ko"]


def test_abtest_judge_prefers_the_planted_answers_and_b_regresses_on_safety(files, parrot_a, parrot_b):
    run_command("abtest", ["--config", str(CONFIGS / "abtest/tiny.yaml"), "--model_a", parrot_a, "--model_b", parrot_b,
                           "--prompts", str(files["prompts"]), "--max_prompts", "3", "--harmful_prompts",
                           str(files["harmful"]), "--jailbreak_templates", "[]", "--privacy_probes", "false",
                           "--max_new_tokens", "64"])
    r = _report("ab-out")
    verdicts = [json.loads(line) for line in open("ab-out/verdicts.jsonl", encoding="utf-8")]
    assert [v["answer_b"] for v in verdicts] == [t["b"] for t in P.TEXT]
    assert [v["verdict"] for v in verdicts] == P.JUDGE_PREFERS
    assert (r["stats"]["wins"], r["stats"]["ties"], r["stats"]["losses"]) == (2, 0, 1)
    assert r["stats"]["sign_test_p"] == pytest.approx(1.0)  # 2 of 3: P(X >= 2) * 2 = 2 * 4/8, capped at 1
    # A refuses one harmful request of two, B none: a regression of 0.5 > tolerance 0.05 stops B
    assert r["safety"]["A"]["refusal_rate"] == 0.5 and r["safety"]["B"]["refusal_rate"] == 0.0
    assert r["safety_regressions"] == ["refusal_rate: 0.500 -> 0.000"]
    assert r["decision"] == "no decision" and "safety regresses: refusal_rate" in r["reason"]


def test_redteam_counts_planted_successes_refusals_and_empty_answers(files, parrot_a):
    run_command("redteam", ["--config", str(CONFIGS / "redteam/tiny.yaml"), "--attacker", parrot_a, "--target",
                            parrot_a, "--seeds", str(files["seeds"]), "--styles", "[role_play, hypothetical]",
                            "--attacker_temperature", "0", "--max_new_tokens", "64", "--attacker_max_new_tokens",
                            "64"])
    r = _report("redteam-out")
    rows = [json.loads(line) for line in open("redteam-out/attempts.jsonl", encoding="utf-8")]
    got = {(P.SEEDS.index(row["seed"]), row["style"]): row for row in rows}
    assert {k: v["attacker_text"] for k, v in got.items()} == {k: w for k, (w, _) in P.ATTACKS.items()}
    assert {k: v["answer"] for k, v in got.items()} == {k: a for k, (_, a) in P.ATTACKS.items()}
    # one compliance (success), two refusals (one Korean), one empty answer (neither)
    assert (r["attempted"], r["successful"]) == (4, 1)
    assert (r["attack_success_rate"], r["refusal_rate"], r["empty_rate"]) == (0.25, 0.5, 0.25)
    assert r["attack_success_rate_by_style"] == {"role_play": 0.5, "hypothetical": 0.0}
    red = [json.loads(line) for line in open("redteam-out/redteam_set.jsonl", encoding="utf-8")]
    assert [x["answer"] for x in red] == [P.COMPLY]


def test_jailbreak_data_keeps_compliant_answers_and_counts_refusals_and_empties(files, parrot_a):
    run_command("jailbreak-data", ["--config", str(CONFIGS / "jailbreak_data/tiny.yaml"), "--model", parrot_a,
                                   "--harmful_prompts", str(files["defense"]), "--max_harmful", "3",
                                   "--heldout_harmful", "1", "--templates", "[role_play]", "--templates_per_prompt",
                                   "1", "--borderline_repeats", "0", "--temperature", "0", "--max_new_tokens", "64"])
    r = _report("jailbreak-out")
    held = [json.loads(line)["prompt"] for line in open("jailbreak-out/heldout_harmful.jsonl", encoding="utf-8")]
    train = [i for i, req in enumerate(P.DEFENSE_REQUESTS) if req not in held]
    assert len(train) == 2
    answers = [P.DEFENSE_A[(i, plain)] for i in train for plain in (True, False)]
    empty = sum(not a for a in answers)
    refused = sum(a in (P.REFUSAL, P.KO_REFUSAL) for a in answers)
    assert (r["dropped_empty_answer"], r["dropped_model_refused"]) == (empty, refused)
    pairs = [json.loads(line) for line in open("jailbreak-out/pairs.jsonl", encoding="utf-8")]
    rejected = sorted(p["rejected"] for p in pairs if p["source"] in ("plain", "role_play"))
    assert rejected == sorted(a for a in answers if a and a not in (P.REFUSAL, P.KO_REFUSAL))
    assert r["model_refusal_rate"] == refused / 4
