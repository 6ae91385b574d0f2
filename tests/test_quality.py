"""Preference-data quality: agreement statistics against their formulas on hand-made tables, planted biases found and
unbiased sets passed, intransitive triples and inconsistent labels found, the annotation schema's errors, pairs,
judges' labels, conversion to training data, the report command with its MLflow run, and the training gate."""

from __future__ import annotations

import json
import math
import random

import pytest

from lightning_post.records.files import DataError
from lightning_post.quality.collect import build_pairs, confidence_of, label_pairs
from lightning_post.quality.report import QualityGate, gate_findings, quality_report
from lightning_post.records.annotations import (
    annotations_from_preferences, load_annotations, normalize_annotation, to_preference_records,
)
from lightning_post.quality.stats import (
    cohen_kappa, cohens_h, distinct_n, fleiss_kappa, intransitive_triples, length_bias, percent_agreement,
    position_bias, win_rates,
)
from tests.conftest import SHARED_DATA, write_jsonl
from tests.cli_runner import client

PROMPT = [{"role": "user", "content": "Name a colour."}]


def ann(a: str, b: str, overall: str, annotator: str = "x", prompt: str = "p1", ra: str = None, rb: str = None,
        **extra) -> dict:
    """An annotation comparing model ``a`` (shown as A) with ``b``."""
    return normalize_annotation({"prompt_id": prompt, "prompt": [{"role": "user", "content": f"question {prompt}"}],
                                 "response_a": ra or f"answer of {a}", "response_b": rb or f"answer of {b}",
                                 "model_a": a, "model_b": b, "overall": overall, "annotator": annotator, **extra},
                                "test")


# ---- agreement ------------------------------------------------------------------------------------------------------
def test_cohen_kappa_on_hand_made_tables():
    # 2x2: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = .5*.6 + .5*.4 = 0.5, kappa = 0.4
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    # 3x3 diagonal 4/3/2 of 12, off-diagonal A->B, B->C, C->A: p_o = 9/12, marginals 5/4/3 and 4/5/3 (rows/cols)
    r1 = ["A"] * 4 + ["A"] + ["B"] * 3 + ["B"] + ["C"] * 2 + ["C"]
    r2 = ["A"] * 4 + ["B"] + ["B"] * 3 + ["C"] + ["C"] * 2 + ["A"]
    p_e = (5 * 5 + 4 * 4 + 3 * 3) / 144
    assert cohen_kappa(r1, r2) == pytest.approx((9 / 12 - p_e) / (1 - p_e))
    assert cohen_kappa(["A", "B"], ["A", "B"]) == 1.0
    assert cohen_kappa(["A", "A", "B", "B"], ["A", "B", "A", "B"]) == pytest.approx(0.0)  # independent marginals
    with pytest.raises(ValueError):
        cohen_kappa(["A"], ["A", "B"])


def test_fleiss_kappa_against_the_published_example_and_limits():
    # Fleiss (1971) style example used on Wikipedia: 10 items, 14 raters, 5 categories -> P_bar 0.378, kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert percent_agreement(table) == pytest.approx(0.378, abs=5e-4)
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)  # P_i = 1, P_e = 1/2
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)  # P_i = 0, P_e = 1/2
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 0]])


def test_agreement_ignores_presentation_order_and_picks_cohen_or_fleiss():
    # two annotators see the same comparisons in opposite orders and prefer the same model each time
    x = [ann("m1", "m2", "A", "x", p) for p in ("p1", "p2")] + [ann("m1", "m2", "B", "x", "p3")]
    y = [ann("m2", "m1", "B", "y", p) for p in ("p1", "p2")] + [ann("m2", "m1", "A", "y", "p3")]
    two = quality_report(x + y)["agreement"]["overall"]
    assert two["kappa_kind"] == "cohen" and two["kappa"] == 1.0 and two["percent_agreement"] == 1.0
    # a third annotator disagreeing on p3: Fleiss on the table of (first, second, Tie) counts per comparison
    z = [ann("m1", "m2", "A", "z", p) for p in ("p1", "p2", "p3")]
    three = quality_report(x + y + z)["agreement"]["overall"]
    assert three["kappa_kind"] == "fleiss"
    assert three["kappa"] == pytest.approx(fleiss_kappa([[3, 0, 0], [3, 0, 0], [1, 2, 0]]))
    assert three["percent_agreement"] == pytest.approx((1 + 1 + 1 / 3) / 3)


# ---- bias -----------------------------------------------------------------------------------------------------------
def test_planted_position_bias_is_detected_and_an_unbiased_set_is_not():
    biased = position_bias(["A"] * 80 + ["B"] * 20 + ["Tie"] * 7)
    assert biased["n"] == 100 and biased["rate"] == 0.8 and biased["p_value"] < 1e-8
    fair = position_bias(["A", "B"] * 50)
    assert fair["rate"] == 0.5 and fair["p_value"] == pytest.approx(1.0)
    rng = random.Random(0)
    gate = QualityGate()

    def report(p_a: float) -> dict:
        anns = [ann("m1", "m2", "A" if rng.random() < p_a else "B", prompt=f"p{i}") for i in range(300)]
        return quality_report(anns)

    assert any("position bias" in f for f in gate_findings(report(0.75), gate))
    assert not any("position bias" in f for f in gate_findings(report(0.5), gate))


def test_planted_length_bias_with_effect_size():
    # the longer answer wins all 40 decisive labels: rate 1, p = 2 * 2**-40, h = pi - pi/2
    got = length_bias(["A", "B"] * 20, [10, 3] * 20, [5, 8] * 20)
    assert got["rate"] == 1.0 and got["p_value"] == pytest.approx(2 * 2.0 ** -40)
    assert got["effect_h"] == pytest.approx(math.pi / 2)
    assert got["mean_log_length_ratio"] == pytest.approx((math.log(2) + math.log(8 / 3)) / 2)
    assert cohens_h(0.5) == 0.0
    # equal lengths and ties are left out
    assert length_bias(["A", "Tie"], [4, 4], [4, 9])["n"] == 0


def test_model_win_rates_count_ties_half():
    rates = win_rates([("m1", "m2", "A"), ("m2", "m1", "B"), ("m1", "m2", "Tie"), ("m2", "m3", "A")])
    # m1: won as A and as B, one tie -> 2.5 of 3. Its 95% Wilson interval by hand, z = 1.959964, z^2 = 3.841459:
    # centre = (p + z^2/2n) / (1 + z^2/n) = (0.833333 + 0.640243) / 2.280486 = 0.646167,
    # half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 1.959964 * sqrt(0.046296 + 0.106707) / 2.280486 = 0.336180
    m1 = rates["m1"]
    assert {k: m1[k] for k in ("wins", "losses", "ties", "n")} == {"wins": 2, "losses": 0, "ties": 1, "n": 3}
    assert m1["win_rate"] == pytest.approx(2.5 / 3) and m1["ci"] == pytest.approx([0.309988, 0.982347], abs=2e-6)
    # m2: one win, two losses, one tie -> 1.5 of 4; m3: none of 1, whose Wilson interval is [0, z^2 / (1 + z^2)]
    assert rates["m2"]["win_rate"] == pytest.approx(1.5 / 4)
    assert rates["m3"]["win_rate"] == 0.0 and rates["m3"]["ci"] == pytest.approx([0.0, 3.841459 / 4.841459])


# ---- validation -----------------------------------------------------------------------------------------------------
def test_an_intransitive_triple_is_found():
    assert intransitive_triples([("a", "b"), ("b", "c"), ("c", "a")]) == [("a", "b", "c")]
    assert intransitive_triples([("a", "b"), ("b", "c"), ("a", "c")]) == []
    cyc = [ann("m1", "m2", "A"), ann("m3", "m2", "B"), ann("m1", "m3", "B")]  # m1 > m2 > m3 > m1
    got = quality_report(cyc)["intransitivity"]
    assert got["intransitive_triples"] == 1 and got["triples_checked"] == 1
    assert got["examples"][0]["cycle"] == ["m1", "m2", "m3"]
    ok = [ann("m1", "m2", "A"), ann("m3", "m2", "B"), ann("m1", "m3", "A")]
    assert quality_report(ok)["intransitivity"]["intransitive_triples"] == 0
    assert gate_findings(quality_report(cyc), QualityGate(max_duplicate_prompt_rate=None))[0].startswith("intransitive")


def test_the_same_pair_labelled_both_ways_is_inconsistent():
    same = [ann("m1", "m2", "A"), ann("m2", "m1", "B")]  # shown swapped, same winner
    flip = [ann("m1", "m2", "A"), ann("m2", "m1", "A")]  # shown swapped, other winner
    assert quality_report(same)["consistency"] == {"repeated": 1, "both_ways": 0, "both_ways_rate": 0.0,
                                                   "examples": []}
    got = quality_report(flip)["consistency"]
    assert got["both_ways"] == 1 and got["examples"][0]["answers"] == ["m1", "m2"]


def test_diversity_completeness_and_balance():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    anns = [ann("m1", "m2", "A", prompt="p1", confidence=3, reasoning="clearer",
                criteria={"helpfulness": "A", "harmlessness": "Tie", "honesty": "A"}),
            ann("m1", "m2", "Tie", prompt="p2")]
    anns[1]["prompt"] = anns[0]["prompt"]  # the same question under another prompt id
    r = quality_report(anns)
    assert r["diversity"]["duplicate_prompt_texts"] == 1 and r["diversity"]["duplicate_prompt_rate"] == 0.5
    assert r["completeness"]["complete_rate"] == 0.5
    assert r["completeness"]["missing"]["confidence"] == 1 and r["completeness"]["missing"]["criteria.honesty"] == 1
    assert r["balance"]["labels"]["Tie"] == {"count": 1, "share": 0.5}
    assert r["balance"]["model_shown_as_a_rate"] == {"m1": 1.0, "m2": 0.0}


# ---- schema ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field, problem", [
    ({"overall": "C"}, "overall", "must be one of ['A', 'B', 'Tie'], got 'C'"),
    ({"confidence": 7}, "confidence", "must be an integer from 1 to 5, got 7"),
    ({"annotator": None}, "annotator", "is missing"),
    ({"criteria": {"helpfulness": "a"}}, "criteria.helpfulness", "must be one of"),
    ({"criteria": {"speed": "A"}}, "criteria.speed", "is not a criterion"),
    ({"response_b": ""}, "response_b", "is empty"),
])
def test_bad_annotation_files_stop_with_file_line_and_field(tmp_path, change, field, problem):
    good = {"prompt": "Hi", "response_a": "Hello", "response_b": "Hey", "overall": "A", "annotator": "ann-1"}
    bad = {**good, **change}
    path = write_jsonl(tmp_path / "labels.jsonl", [good, good, {k: v for k, v in bad.items() if v is not None}])
    with pytest.raises(DataError) as e:
        load_annotations([str(path)])
    assert e.value.where == f"{path}:3" and e.value.field == field and problem in e.value.problem


def test_conversion_to_training_pairs(tmp_path):
    from lightning_post.records.preference import load_preference_records

    anns = [ann("m1", "m2", "B", confidence=4, criteria={"honesty": "A"}), ann("m1", "m3", "Tie", confidence=2),
            ann("m2", "m3", "A")]
    dropped = to_preference_records(anns)
    assert [(r["chosen"], r["rejected"]) for r in dropped] == [("answer of m2", "answer of m1"),
                                                              ("answer of m2", "answer of m3")]
    half = to_preference_records(anns[:2], ties="half", confidence_weight=True)
    assert [r.get("label") for r in half] == [None, 0.5] and [r["weight"] for r in half] == [0.8, 0.4]
    assert to_preference_records(anns, criterion="honesty")[0]["chosen"] == "answer of m1"
    with pytest.raises(DataError, match="confidence"):
        to_preference_records(anns, confidence_weight=True)
    # the converted file is a training preference file, soft labels included
    path = write_jsonl(tmp_path / "train.jsonl", half)
    pairs = [p for _, p in load_preference_records([str(path)])]
    assert [p["label"] for p in pairs] == [None, 0.5] and pairs[0]["weight"] == 0.8


def test_preference_records_become_annotations_in_a_seeded_random_order():
    located = [(f"f:{i}", {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) for i in range(200)]
    anns = annotations_from_preferences(located, "hh", seed=1)
    winners = [a[f"response_{a['overall'].lower()}"] for a in anns]
    assert winners == [f"good {i}" for i in range(200)]
    shown_first = sum(a["overall"] == "A" for a in anns)
    assert 70 < shown_first < 130 and annotations_from_preferences(located, "hh", seed=1) == anns
    soft = annotations_from_preferences([("f:1", {"prompt": "q", "chosen": "x", "rejected": "y", "label": 0.5})], "h")
    assert soft[0]["overall"] == "Tie"


# ---- pairs and judges -----------------------------------------------------------------------------------------------
def _responses(prompts: int, models=("m1", "m2", "m3")) -> list[dict]:
    return [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"q{i}"}], "model": m,
             "response": f"{m} answers q{i}"} for i in range(prompts) for m in models]


def test_every_model_pair_per_prompt_in_a_recorded_random_order():
    pairs = build_pairs(_responses(100), seed=0)
    assert len(pairs) == 300 and len({p["pair_id"] for p in pairs}) == 300
    for p in pairs:  # the recorded models are the ones whose answers are shown
        assert p["response_a"].startswith(p["model_a"]) and p["response_b"].startswith(p["model_b"])
    firsts = sum(p["model_a"] < p["model_b"] for p in pairs)
    assert 120 < firsts < 180  # randomised: about half in sorted order
    assert build_pairs(_responses(100), seed=0) == pairs and build_pairs(_responses(100), seed=1) != pairs
    with pytest.raises(DataError, match="more than once"):
        build_pairs(_responses(1) * 2)


def test_confidence_scale():
    assert [confidence_of(p) for p in (0.5, 0.59, 0.61, 0.75, 0.1, 0.95)] == [1, 1, 2, 3, 5, 5]


@pytest.fixture(scope="module")
def tiny_reward(tiny_path, tmp_path_factory):
    """A random sequence-classification head on the tiny Llama, saved like a RewardModule export."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lightning_post.models.loading import load_tokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_path, num_labels=1)
    tok = load_tokenizer(tiny_path)
    config.pad_token_id = tok.pad_token_id
    out = tmp_path_factory.mktemp("reward")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _swapped(pairs: list[dict]) -> list[dict]:
    """The same comparisons with the answers shown the other way round."""
    from lightning_post.records.annotations import normalize_pair

    return [normalize_pair({"prompt_id": p["prompt_id"], "prompt": p["prompt"], "response_a": p["response_b"],
                            "response_b": p["response_a"], "model_a": p["model_b"], "model_b": p["model_a"]}, "swap")
            for p in pairs]


class _FixedRewards:
    """A reward judge (the interface of RewardModelJudge) whose score of an answer is set by hand per model."""

    tie_band = 0.0

    def __init__(self, by_model: dict[str, float]):
        self.by_model, self.calls = by_model, []

    def scores(self, prompts, answers):
        self.calls.append(len(answers))
        return [self.by_model[a.split()[0]] for a in answers]  # "m1 answers q0" -> m1


def test_reward_model_judge_labels_are_bradley_terry_of_its_scores(tiny_reward):
    from lightning_post.scoring.judges import RewardModelJudge

    # scores m1 = 2, m2 = 0, m3 = 2 by hand: P(A better) = sigmoid(r_A - r_B); sigmoid(2) = 1 / (1 + e^-2) =
    # 1 / 1.135335 = 0.880797 -> A, confidence 1 + floor(10 * 0.380797) = 4; sigmoid(-2) = 0.119203 -> B, 4;
    # sigmoid(0) = 0.5 -> Tie, 1
    expected = {("m1", "m2"): ("A", 4, "reward 2.000 (A) vs 0.000 (B); P(A better) = 0.881"),
                ("m2", "m1"): ("B", 4, "reward 0.000 (A) vs 2.000 (B); P(A better) = 0.119"),
                ("m1", "m3"): ("Tie", 1, "reward 2.000 (A) vs 2.000 (B); P(A better) = 0.500"),
                ("m3", "m1"): ("Tie", 1, "reward 2.000 (A) vs 2.000 (B); P(A better) = 0.500"),
                ("m2", "m3"): ("B", 4, "reward 0.000 (A) vs 2.000 (B); P(A better) = 0.119"),
                ("m3", "m2"): ("A", 4, "reward 2.000 (A) vs 0.000 (B); P(A better) = 0.881")}
    pairs = build_pairs(_responses(3), seed=0)
    fixed = _FixedRewards({"m1": 2.0, "m2": 0.0, "m3": 2.0})
    anns = label_pairs(pairs + _swapped(pairs), fixed, "rm")
    assert fixed.calls == [9]  # each of the 3 x 3 distinct (prompt, answer) scored once, in one call
    assert len(anns) == 18 and {a["annotator"] for a in anns} == {"rm"}
    assert {(a["model_a"], a["model_b"]) for a in anns} == set(expected)  # both orders of every model pair
    for a in anns:
        assert (a["overall"], a["confidence"], a["reasoning"]) == expected[a["model_a"], a["model_b"]], a
    # the real reward model (random head, so no ties): showing the answers the other way round mirrors each label
    judge = RewardModelJudge(tiny_reward, batch_size=2)
    shown, flipped = label_pairs(pairs, judge, "rm"), label_pairs(_swapped(pairs), judge, "rm")
    assert len(shown) == 9 and "Tie" not in {a["overall"] for a in shown}
    for a, b in zip(shown, flipped):
        assert {a["overall"], b["overall"]} == {"A", "B"} and a["confidence"] == b["confidence"]
        p_a, p_b = (float(x["reasoning"].rsplit("= ", 1)[1]) for x in (a, b))
        assert p_a + p_b == pytest.approx(1.0, abs=1.5e-3)  # each rounded to 3 decimals
    with pytest.raises(ValueError, match="LLM judge"):
        label_pairs(pairs, judge, "rm", criteria=["honesty"])


class _PositionBiasedLM:
    """Stands in for the judge LM's generator: asked which answer is better, it gives the answer shown first
    P = 1/2 + (q[first] - q[second]) + 0.15 (a quality difference and a position bias of 0.15); asked about
    helpfulness it ranks the models the other way round."""

    Q = {"m1": 0.3, "m2": 0.0, "m3": 0.1}

    def option_probs(self, asks, options, answer_prefix=None, desc=None):
        import torch

        from lightning_post.quality.collect import CRITERION_QUESTIONS

        assert options == ["A", "B"]
        rows = []
        for ask in asks:
            text = ask[-1]["content"]
            first, second = sorted((m for m in self.Q if f"{m} answers" in text), key=lambda m: text.index(f"{m} ans"))
            sign = -1 if CRITERION_QUESTIONS["helpfulness"] in text else 1
            p = 0.5 + sign * (self.Q[first] - self.Q[second]) + 0.15
            rows.append([p, 1 - p])
        return torch.tensor(rows, dtype=torch.float64)


def test_llm_judge_labels_both_orders_criteria_and_single_order(tiny_path):
    from lightning_post.scoring.judges import LLMJudge

    # both orders: p_a = (P(A | A first) + P(A | A second)) / 2 = 1/2 + q[A] - q[B], the bias of 0.15 cancels;
    # one order: p_first = 1/2 + q[A] - q[B] + 0.15. Confidence 1 + floor(10 |p - 1/2|).
    # (model_a, model_b): (overall, confidence, one-order verdict, its confidence)
    expected = {("m1", "m2"): ("A", 4, "A", 5),  # p_a 0.8, p_first 0.95
                ("m2", "m1"): ("B", 4, "B", 2),  # 0.2, 0.35
                ("m1", "m3"): ("A", 3, "A", 4),  # 0.7, 0.85
                ("m3", "m1"): ("B", 3, "B", 1),  # 0.3, 0.45
                ("m2", "m3"): ("B", 2, "A", 1),  # 0.4, 0.55: the position bias flips the one-order verdict
                ("m3", "m2"): ("A", 2, "A", 3)}  # 0.6, 0.75
    pairs = build_pairs(_responses(1), seed=0)
    pairs += _swapped(pairs)
    stub = LLMJudge.from_generator(_PositionBiasedLM(), tie_band=0.0)
    anns = label_pairs(pairs, stub, "llm", criteria=["helpfulness"], single_order_annotator="llm-one-order")
    both, single = anns[:6], anns[6:]
    assert {a["annotator"] for a in both} == {"llm"} and {a["annotator"] for a in single} == {"llm-one-order"}
    assert {(a["model_a"], a["model_b"]) for a in both} == set(expected)
    for a, one in zip(both, single):
        want = expected[a["model_a"], a["model_b"]]
        assert (a["overall"], a["confidence"], one["overall"], one["confidence"]) == want, a
        assert a["criteria"] == {"helpfulness": {"A": "B", "B": "A"}[a["overall"]]}  # ranked the other way round
        assert one["criteria"] == {} and (one["model_a"], one["model_b"]) == (a["model_a"], a["model_b"])
    m1_m2 = next(a for a in both if (a["model_a"], a["model_b"]) == ("m1", "m2"))
    assert m1_m2["reasoning"] == "P(A better) = 0.800 (A shown first 0.950, shown second 0.650)"
    # the real tiny LM: asked in both orders, showing the answers the other way round mirrors each label exactly
    judge = LLMJudge(tiny_path, tie_band=0.0, batch_size=4)
    real = build_pairs(_responses(2), seed=0)
    shown, flipped = label_pairs(real, judge, "llm"), label_pairs(_swapped(real), judge, "llm")
    assert len(shown) == 6
    for a, b in zip(shown, flipped):
        assert {a["overall"], b["overall"]} == {"A", "B"} and a["confidence"] == b["confidence"]


# ---- commands -------------------------------------------------------------------------------------------------------
def test_report_command_writes_json_page_plots_and_mlflow_run(tmp_path):
    from lightning_post.commands import run_command

    rng = random.Random(0)
    people = []
    for i in range(60):
        for who in ("ann-1", "ann-2"):
            a, b = ("m1", "m2") if rng.random() < 0.5 else ("m2", "m1")
            win = "A" if (a == "m1") == (rng.random() < 0.8) else "B"  # both prefer m1 80% of the time
            people.append({"prompt": f"question {i}", "prompt_id": f"p{i}", "response_a": f"{a} says {'x ' * i}",
                           "response_b": f"{b} says", "model_a": a, "model_b": b, "overall": win, "annotator": who,
                           "confidence": 1 + i % 5})
    path = write_jsonl(tmp_path / "people.jsonl", people)
    out, db = tmp_path / "report", f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    report = run_command("data report", ["--annotations", str(path), "--output_dir", str(out), "--tracking_uri", db])
    saved = json.loads((out / "report.json").read_text())
    assert saved["bias"]["model_win_rates"]["m1"]["win_rate"] == report["bias"]["model_win_rates"]["m1"]["win_rate"]
    assert saved["agreement"]["overall"]["kappa_kind"] == "cohen"
    page = (out / "report.html").read_text()
    assert "Model win rates" in page and 'src="plots/model_win_rates.png"' in page
    assert {p.name for p in (out / "plots").iterdir()} >= {"labels.png", "model_win_rates.png", "bias.png"}
    c = client(tmp_path)
    run = c.get_run(saved["mlflow_run_id"])
    assert run.data.metrics["quality/win_rate/m1"] == pytest.approx(saved["bias"]["model_win_rates"]["m1"]["win_rate"])
    assert run.data.metrics["quality/kappa/overall"] == pytest.approx(saved["agreement"]["overall"]["kappa"])
    names = {a.path for a in c.list_artifacts(run.info.run_id)} | {a.path for a in c.list_artifacts(run.info.run_id,
                                                                                                     "plots")}
    assert {"report.json", "report.html", "plots/bias.png"} <= names
    # the answers of m1 grow with i: a gate on length bias fails the command, after the report is written
    gated = tmp_path / "gated"
    with pytest.raises(DataError, match="quality gate failed"):
        run_command("data report", ["--annotations", str(path), "--output_dir", str(gated), "--tracking_uri", db,
                               "--gate.mode", "fail", "--gate.max_length_bias", "0.05"])
    assert json.loads((gated / "report.json").read_text())["gate"]["findings"]


def test_pairs_label_convert_commands_on_the_tiny_model(tmp_path, tiny_path):
    from lightning_post.commands import run_command

    words = ("yes", "no", "maybe")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}."} for w in words])
    pairs = tmp_path / "pairs.jsonl"
    models = [tiny_path, "tiny-llama"]  # the same network under two names; sampling makes their answers differ
    summary = run_command("data pairs", ["--models", json.dumps(models), "--prompts", str(prompts),
                                    "--output", str(pairs), "--max_new_tokens", "6", "--temperature", "1.0"])
    assert summary == {"answers": 6, "pairs": 3, "prompts": 3, "models": sorted(models), "output": str(pairs)}
    # 3 prompts x 2 models answered; one pair per prompt, showing each model's own answer on its recorded side
    answers = {(r["prompt"][-1]["content"], r["model"]): r["response"]
               for r in map(json.loads, (tmp_path / "pairs.responses.jsonl").read_text().splitlines())}
    assert set(answers) == {(f"Say {w}.", m) for w in words for m in models}
    made = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert sorted(p["prompt"][-1]["content"] for p in made) == sorted(f"Say {w}." for w in words)
    for p in made:
        assert {p["model_a"], p["model_b"]} == set(models)
        assert (p["response_a"], p["response_b"]) == (answers[p["prompt"][-1]["content"], p["model_a"]],
                                                      answers[p["prompt"][-1]["content"], p["model_b"]])
    labels = tmp_path / "labels.jsonl"
    run_command("data label", ["--pairs", str(pairs), "--judge_model", tiny_path, "--output", str(labels)])
    anns = [a for _, a in load_annotations([str(labels)])]
    # the random 2-layer judge barely tells answers apart: asked in both orders its position preference cancels and
    # P(A better) stays within 1e-3 of 1/2 (about 1e-5 measured), far inside the default tie band of 0.05 -> every
    # label is a tie with confidence 1, recorded under the judge folder's name
    assert [(a["pair_id"], a["response_a"], a["response_b"]) for a in anns] == \
        [(p["pair_id"], p["response_a"], p["response_b"]) for p in made]
    assert {(a["annotator"], a["overall"], a["confidence"]) for a in anns} == {("llm:tiny-llama", "Tie", 1)}
    train = tmp_path / "train.jsonl"
    got = run_command("data convert", ["--annotations", str(labels), "--output", str(train), "--ties", "half"])
    assert got == {"annotations": 3, "pairs": 3, "output": str(train)}
    # ties kept as soft labels 0.5, the answers in their shown order
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert [(r["chosen"], r["rejected"], r["label"], r["pair_id"]) for r in rows] == \
        [(p["response_a"], p["response_b"], 0.5, p["pair_id"]) for p in made]
    dropped = run_command("data convert", ["--annotations", str(labels), "--output", str(tmp_path / "drop.jsonl")])
    assert dropped["pairs"] == 0  # ties are dropped by default


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_report_command_on_models_named_by_their_folders(tmp_path):
    """``data pairs --models <export folders>`` records folder paths as model names: the report's MLflow keys use
    the folder's name (numbered where two agree), and the run records which key is which model."""
    from lightning_post.commands import run_command

    models = [str(tmp_path / "exports" / "sft" / "model"), str(tmp_path / "pipelines" / "x" / "sft" / "export"
                                                                / "model"), "smollm2-135m-instruct"]
    rng = random.Random(0)
    rows = []
    for i in range(24):
        a, b = rng.sample(models, 2)
        rows.append({"prompt": f"question {i}", "prompt_id": f"p{i}", "response_a": f"{a} says {'x ' * i}",
                     "response_b": f"{b} says", "model_a": a, "model_b": b, "overall": rng.choice("AB"),
                     "annotator": ("llm:/models/judge", "ann-1")[i % 2]})
    path = write_jsonl(tmp_path / "judged.jsonl", rows)
    out, db = tmp_path / "report", f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    report = run_command("data report", ["--annotations", str(path), "--output_dir", str(out), "--tracking_uri", db])
    saved = _strict_json((out / "report.json").read_text())
    run = client(tmp_path).get_run(saved["mlflow_run_id"])
    rates = report["bias"]["model_win_rates"]
    wins = {k.removeprefix("quality/win_rate/"): v for k, v in run.data.metrics.items() if "win_rate/" in k}
    assert sorted(wins) == ["sft", "sft-2", "smollm2-135m-instruct"]
    for key, model in ((k.removeprefix("metric_name."), v) for k, v in run.data.params.items()
                       if k.startswith("metric_name.")):
        assert wins[key] == pytest.approx(rates[model]["win_rate"])
    assert wins["smollm2-135m-instruct"] == pytest.approx(rates["smollm2-135m-instruct"]["win_rate"])
    assert {"quality/length_bias/judge", "quality/position_bias/ann-1"} <= set(run.data.metrics)
    assert run.info.run_name.startswith("data_report-")


def test_a_bad_file_stops_the_report_command_with_its_line(tmp_path, capsys):
    from lightning_post.cli import main

    path = write_jsonl(tmp_path / "labels.jsonl", [{"prompt": "Hi", "response_a": "a", "response_b": "b",
                                                    "overall": "A", "confidence": 7, "annotator": "x"}])
    with pytest.raises(SystemExit) as stop:
        main(["data", "report", "--annotations", str(path), "--output_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"lightning-post data report: error: {path}:1: field 'confidence'")
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


# ---- the training gate ----------------------------------------------------------------------------------------------
def _length_biased_pairs(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": "a long and careful answer " * 3, "rejected": "short"}
            for i in range(40)]
    return write_jsonl(tmp_path / "biased.jsonl", rows)


def test_preference_data_module_gate_fails_or_warns_before_training(tmp_path, tiny_path, caplog):
    from lightning_post.data.preference import PreferenceDataModule

    path = _length_biased_pairs(tmp_path)
    dm = PreferenceDataModule(train_files=str(path), tokenizer=tiny_path,
                              quality_gate=QualityGate(mode="fail"))
    with pytest.raises(DataError, match="length bias: the longer answer chosen 100.0% of 36"):
        dm.prepare_data()
    dm = PreferenceDataModule(train_files=str(path), tokenizer=tiny_path, quality_gate=QualityGate(mode="warn"))
    dm.prepare_data()
    dm.setup("fit")
    assert "length bias" in caplog.text and dm.quality["findings"]
    assert dm.setup_metrics()["data/quality/length_bias"] == 1.0


def test_real_human_preferences_length_bias_counts():
    """HH-RLHF harmless test pairs: the report's count of people choosing the longer reply equals a direct count."""
    from lightning_post.records.chat import split_hh_dialogue
    from lightning_post.records.preference import normalize_preference_record
    from lightning_post.records.files import json_lines

    located = list(json_lines(SHARED_DATA / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz"))
    k = n = malformed = 0
    for where, rec in located:
        try:  # a few dialogues end in an empty reply or differ before it: malformed, left out
            normalize_preference_record(rec, where)
        except DataError:
            malformed += 1
            continue
        chosen, rejected = (len(split_hh_dialogue(rec[side])[1].split()) for side in ("chosen", "rejected"))
        n += chosen != rejected
        k += chosen > rejected
    invalid = []
    length = quality_report(annotations_from_preferences(located, "hh-rlhf", invalid=invalid))["bias"]["length"]
    assert (length["k"], length["n"]) == (k, n) and n > 2000
    assert len(invalid) == malformed > 0
