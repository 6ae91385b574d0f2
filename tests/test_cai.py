"""Constitutional AI: constitutions, prompt builders (string by string), option probabilities and soft labels on a
tiny model with set logits, the critique -> revision loop, resumption, and the CLI (fit and predict)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_post.cai.constitution import (
    critique_messages, feedback_messages, load_constitution, render_conversation, revise_question_messages,
    revision_messages,
)
from lightning_post.cai.loop import ai_feedback, choose_principle, critique_revision, soft_label
from lightning_post.generation import ChatGenerator
from lightning_post.data.appendable import AppendableJsonl
from lightning_post.records.prompts import load_prompt_items, prompt_id
from lightning_post.records.files import DataError
from tests.conftest import CONFIGS, SHARED_DATA
from tests.cli_runner import cli, client

PAPER = SHARED_DATA / "constitution" / "critique_revision_instructions.json"
PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]


@pytest.fixture(scope="module")
def tiny(tiny_path):
    from lightning_post.models.loading import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    return load_causal_lm(tiny_path, "float32", "eager").eval(), load_tokenizer(tiny_path)


# ---- constitutions and prompt builders ------------------------------------------------------------------------------
def test_default_constitution_english_prompts_string_by_string():
    c = load_constitution(None, "en")
    assert [p.name for p in c.principles] == ["helpfulness", "harmlessness", "honesty", "respect", "privacy"]
    harm = c.principle("harmlessness")
    assert critique_messages(PROMPT, "Use a tension wrench.", harm) == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Use a tension wrench."},
        {"role": "user", "content": "Identify specific ways in which the assistant's last response is harmful, "
                                    "unethical, dangerous or illegal."},
    ]
    asked = revise_question_messages(PROMPT, "Use a tension wrench.", harm, "It helps burglary.", c)
    assert asked[3:] == [
        {"role": "assistant", "content": "It helps burglary."},
        {"role": "user", "content": "Given this critique, does the response need to be revised? Answer Yes or No."},
    ]
    assert revision_messages(PROMPT, "Use a tension wrench.", harm, "It helps burglary.")[4] == {
        "role": "user", "content": "Please rewrite the assistant's response to remove any harmful, unethical, "
                                   "dangerous or illegal content."}
    assert feedback_messages(PROMPT, "No.", "Sure: ...", harm, c) == [{"role": "user", "content": (
        "Consider the following conversation between a human and an assistant:\n\nHuman: How do I pick a lock?\n\n"
        "Which of these assistant responses is less harmful?\n(A) No.\n(B) Sure: ...\n\nAnswer with (A) or (B).")}]
    assert (c.answer_yes, c.answer_no, c.answer_prefix) == ("Yes", "No", "The answer is: (")


def test_default_constitution_korean_prompts_string_by_string():
    c = load_constitution(None, "ko")
    helpful = c.principle("helpfulness")
    assert helpful.statement == "사용자에게 도움이 되는 정보를 제공한다."
    assert critique_messages(PROMPT, "몰라요.", helpful)[2] == {
        "role": "user", "content": "어시스턴트의 마지막 응답이 사용자에게 도움이 되는 관련 정보를 제공하지 못한 점을 구체적으로 지적하세요."}
    assert revise_question_messages(PROMPT, "몰라요.", helpful, "정보가 없습니다.", c)[-1] == {
        "role": "user", "content": "이 비평을 보면 응답을 수정해야 합니까? 예 또는 아니오로 답하세요."}
    conversation = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "안녕하세요"},
                    {"role": "user", "content": "주소 알려줘"}]
    assert render_conversation(conversation, c) == "사람: 안녕\n\n어시스턴트: 안녕하세요\n\n사람: 주소 알려줘"
    text = feedback_messages(conversation, "싫어요", "서울시", c.principle("privacy"), c)[0]["content"]
    assert text == ("다음은 사람과 어시스턴트의 대화입니다:\n\n사람: 안녕\n\n어시스턴트: 안녕하세요\n\n사람: 주소 알려줘\n\n"
                    "다음 어시스턴트 응답 중 사람들의 프라이버시를 더 잘 보호하는 것은 무엇입니까?\n(A) 싫어요\n(B) 서울시\n\n"
                    "(A) 또는 (B)로 답하세요.")
    assert (c.answer_yes, c.answer_no, c.answer_prefix) == ("예", "아니오", "답: (")


def test_paper_constitution_loads_its_16_critique_revision_pairs():
    c = load_constitution(str(PAPER))
    assert len(c) == 16
    first = c.principles[0]
    assert first.name == "harmful0"
    assert first.critique_request == ("Identify specific ways in which the assistant's last response is harmful, "
                                      "unethical, racist, sexist, toxic, dangerous, or illegal.")
    assert first.revision_request == ("Please rewrite the assistant response to remove any and all harmful, "
                                      "unethical, racist, sexist, toxic, dangerous, or illegal content.")
    assert all(not p.critique_request.startswith(("\n", "CritiqueRequest")) and not p.revision_request.endswith(":")
               for p in c.principles)
    with pytest.raises(DataError, match="English only"):
        load_constitution(str(PAPER), "ko")


def test_bad_constitutions_name_file_and_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("languages:\n  en: {revise_question: q, answer_yes: y, answer_no: n, human: H, assistant: A,\n"
                   "    feedback_template: '{conversation} {question} {a} {b}', answer_prefix: '('}\n"
                   "principles:\n  - name: p\n    en: {statement: s, critique_request: c, revision_request: ''}\n")
    with pytest.raises(DataError, match=r"principles\[0\]\.en.*'revision_request'.*missing or empty"):
        load_constitution(str(bad))
    with pytest.raises(DataError, match=r"languages\.fr.*missing"):
        load_constitution(None, "fr")
    bad.write_text(bad.read_text().replace("'{conversation} {question} {a} {b}'", "'{dialogue}'").replace(
        "revision_request: ''", "revision_request: r, comparison: x"))
    with pytest.raises(DataError, match="feedback_template.*bad placeholder"):
        load_constitution(str(bad))
    with pytest.raises(FileNotFoundError):
        load_constitution(str(tmp_path / "missing.yaml"))


def test_principle_choice_is_seeded_per_prompt_and_round():
    c = load_constitution()
    draws = [choose_principle(c, "id1", r, "sample", 0).name for r in range(20)]
    assert draws == [choose_principle(c, "id1", r, "sample", 0).name for r in range(20)]  # resumable
    assert len(set(draws)) > 1
    assert [choose_principle(c, "x", r, "cycle", 0).name for r in range(6)] == [
        "helpfulness", "harmlessness", "honesty", "respect", "privacy", "helpfulness"]


# ---- option probabilities and soft labels ----------------------------------------------------------------------------
def test_soft_label_by_hand():
    # answer 1 shown as (A): P(A) = 0.8; shown as (B): P(B) = 0.6 -> (0.8 + 0.6) / 2
    assert soft_label(torch.tensor([[0.8, 0.2]]), torch.tensor([[0.4, 0.6]])).item() == pytest.approx(0.7)


def _choice_probs(model, tok, conversation, options, prefix) -> list[float]:
    """P(option) after the chat prompt and ``prefix``, normalised over the options: one plain forward per option."""
    context = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    n = len(tok(context, add_special_tokens=False).input_ids)
    logliks = []
    for option in options:
        ids = tok(context + prefix + option, add_special_tokens=False).input_ids
        with torch.no_grad():
            logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        logliks.append(sum(logps[t - 1, ids[t]].item() for t in range(n, len(ids))))
    return torch.softmax(torch.tensor(logliks), 0).tolist()


def test_option_probs_are_the_models_normalised_choice_probabilities(tiny):
    """On the tiny model, P(option) equals exp of the summed token log-probs of ``prefix + option`` after the chat
    prompt, computed here with a plain forward, normalised over the options."""
    model, tok = tiny
    gen = ChatGenerator(model, tok, batch_size=3)
    convs = [PROMPT, [{"role": "user", "content": "Tell me a joke."}]]
    # options of different token lengths (one row each), and options differing only in their last token (one row)
    for options, prefix in ((["Yes", "No", "예"], "Well: "), (["A", "B"], "The answer is: (")):
        got = gen.option_probs(convs, options, prefix=prefix)
        for i, conv in enumerate(convs):
            expected = torch.tensor(_choice_probs(model, tok, conv, options, prefix), dtype=got.dtype)
            assert torch.allclose(got[i], expected, atol=1e-5), (options, got[i], expected)


def test_soft_label_cancels_a_pure_position_bias(tiny):
    """A judge whose logits we set: every position scores tokens "A" and "B" alike except a bias +c on "A". Its
    normalised choice is P(A) = sigmoid(c) in both orderings, so each answer gets sigmoid(c) once as (A) and
    1 - sigmoid(c) once as (B): the soft label is exactly 1/2."""
    model, tok = tiny
    judge = type(model)(model.config)
    judge.load_state_dict(model.state_dict())
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.weight[b] = head.weight[a]
        head.bias.zero_()
        head.bias[a] = 1.5
    judge.lm_head = head
    judge.eval()
    c = load_constitution()
    gen = ChatGenerator(judge, tok, batch_size=4, max_new_tokens=4, temperature=1.0)
    probs = gen.option_probs([feedback_messages(PROMPT, "x", "y", c.principles[1], c)], ["A", "B"], c.answer_prefix)
    assert probs[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1.5)), abs=1e-5)
    torch.manual_seed(0)
    records = ai_feedback(gen, [{"id": "a", "prompt": PROMPT}, {"id": "b", "prompt": PROMPT}], c, temperature=1.0)
    assert records
    for r in records:
        assert r["label"] == pytest.approx(0.5, abs=1e-5)
        assert r["p_first_ordering"][0] == pytest.approx(1 / (1 + math.exp(-1.5)), abs=1e-5)


def test_ai_feedback_labels_are_the_averaged_orderings(tiny):
    """A record's label is P(chosen is better) = (P((A) | chosen shown first) + P((B) | chosen shown second)) / 2
    >= 1/2, the two probabilities read here from plain forwards on the feedback question under the record's
    principle, asked with its two answers in both orders."""
    model, tok = tiny
    c = load_constitution()
    gen = ChatGenerator(model, tok, batch_size=4, max_new_tokens=5, temperature=1.0)
    torch.manual_seed(1)
    items = [{"id": str(i), "prompt": [{"role": "user", "content": f"Question {i}?"}]} for i in range(3)]
    records = ai_feedback(gen, items, c, temperature=1.0)
    assert len(records) == 3
    for r in records:
        principle = c.principle(r["principle"])
        first = feedback_messages(r["prompt"], r["chosen"], r["rejected"], principle, c)
        second = feedback_messages(r["prompt"], r["rejected"], r["chosen"], principle, c)
        as_a = _choice_probs(model, tok, first, ["A", "B"], c.answer_prefix)[0]
        as_b = _choice_probs(model, tok, second, ["A", "B"], c.answer_prefix)[1]
        # the random judge is almost indifferent (labels 0.50006-0.50009): a tight tolerance, still 20 times the
        # float32 difference between the batched and the plain forwards
        assert r["label"] == pytest.approx((as_a + as_b) / 2, abs=3e-6) and r["label"] >= 0.5
        assert r["chosen"] != r["rejected"]
        assert sum(r["p_first_ordering"]) == pytest.approx(1.0, abs=1e-6)


# ---- the loop -----------------------------------------------------------------------------------------------------
def test_critique_revision_records_and_decisions(tiny):
    model, tok = tiny
    c = load_constitution()
    items = [{"id": str(i), "prompt": [{"role": "user", "content": f"Question {i}?"}]} for i in range(3)]
    gen = ChatGenerator(model, tok, batch_size=2, max_new_tokens=4, temperature=1.0)
    torch.manual_seed(0)
    records = critique_revision(gen, items, c, rounds=2, principle_choice="cycle", threshold=0.0)
    assert len(records) == 6 and [r["round"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert [r["principle"] for r in records] == ["helpfulness"] * 3 + ["harmlessness"] * 3
    assert all(r["revised"] and 0 < r["p_revise"] < 1 for r in records)
    for first, second in zip(records[:3], records[3:]):  # round 2 revises round 1's revision
        assert second["answer"] == first["revision"] and second["initial"] == first["initial"]
    # threshold 1: no answer is revised (P(yes) < 1), the revision is the answer itself
    torch.manual_seed(0)
    kept = critique_revision(gen, items, c, rounds=1, threshold=1.0)
    assert all(not r["revised"] and r["revision"] == r["answer"] for r in kept)
    # the decision is the model's own yes/no probability for the revise question
    r = kept[0]
    asked = revise_question_messages(r["prompt"], r["answer"], c.principle(r["principle"]), r["critique"], c)
    assert gen.option_probs([asked], ["Yes", "No"])[0, 0].item() == pytest.approx(r["p_revise"], abs=1e-5)


def test_prompt_items_first_turn_dedup_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [{"chosen": "\n\nHuman: Steal a car?\n\nAssistant: No.\n\nHuman: Why?\n\nAssistant: Illegal.",
             "rejected": "\n\nHuman: Steal a car?\n\nAssistant: No.\n\nHuman: Why?\n\nAssistant: Fun."},
            {"prompt": "Steal a car?"}, {"prompt": "Hi"}, {"chosen": "x"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"{f}:4: field 'rejected'"):
        load_prompt_items([str(f)], True, None)
    items, skipped = load_prompt_items([str(f)], True, None, skip_invalid=True)
    assert [it["prompt"] for it in items] == [[{"role": "user", "content": "Steal a car?"}],
                                              [{"role": "user", "content": "Hi"}]]
    assert len(skipped) == 1 and items[0]["id"] == prompt_id(items[0]["prompt"])
    items, _ = load_prompt_items([str(f)], False, 1, skip_invalid=True)
    assert len(items) == 1 and len(items[0]["prompt"]) == 3


def test_appendable_jsonl_drops_an_unfinished_line(tmp_path):
    store = AppendableJsonl(tmp_path / "r.jsonl")
    store.append([{"id": "a"}, {"id": "b"}])
    with open(store.path, "a") as f:
        f.write('{"id": "c", "trunc')  # killed mid-write
    assert store.done_ids() == {"a", "b"}
    assert store.path.read_text() == '{"id": "a"}\n{"id": "b"}\n'


# ---- the CLI: generation before training, predict alone, resumption ------------------------------------------
def test_cai_fit_generates_then_trains_and_logs(tmp_path):
    cli(["fit", "--config", str(CONFIGS / "cai/tiny.yaml")], tmp_path)
    revisions = AppendableJsonl(tmp_path / "cai-out" / "revisions.jsonl").read()
    feedback = AppendableJsonl(tmp_path / "cai-out" / "feedback.jsonl").read()
    assert len(revisions) == 4 and len({r["id"] for r in revisions}) == 4
    assert {"prompt", "initial", "principle", "critique", "revision", "p_revise", "revised"} <= set(revisions[0])
    assert feedback and all(r["label"] >= 0.5 for r in feedback)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("cai").experiment_id)[0]
    assert run.data.metrics["cai/records"] == 4
    assert "train/loss" in run.data.metrics and "val/loss" in run.data.metrics
    assert {a.path for a in c.list_artifacts(run.info.run_id, "cai")} == {"cai/revisions.jsonl", "cai/feedback.jsonl"}
    # the AI-feedback file is preference data: soft labels reach DPO's loss
    from lightning_post import PreferenceDataModule

    dm = PreferenceDataModule(train_files=str(tmp_path / "cai-out" / "feedback.jsonl"), val_fraction=0.25,
                              tokenizer="tiny-llama", max_length=128)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    labels = {round(r["label"], 5) for r in feedback}
    assert {round(v, 5) for v in batch["label"].tolist()} <= labels


def test_cai_predict_resumes_without_redoing_records(tmp_path):
    out = tmp_path / "cai-out" / "revisions.jsonl"
    cli(["predict", "--config", str(CONFIGS / "cai/tiny.yaml"), "--data.init_args.max_prompts", "2"], tmp_path)
    first = out.read_text()
    assert len(first.splitlines()) == 2
    with out.open("a") as f:
        f.write('{"id": "interrupted')  # a run killed while writing its third record
    cli(["predict", "--config", str(CONFIGS / "cai/tiny.yaml"), "--data.init_args.max_prompts", "4"], tmp_path)
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and out.read_text().startswith(first)  # the first two were not redone
    assert len({json.loads(line)["id"] for line in lines}) == 4
    # nothing left to do: a third run generates nothing
    cli(["predict", "--config", str(CONFIGS / "cai/tiny.yaml"), "--data.init_args.max_prompts", "4"], tmp_path)
    assert out.read_text().splitlines() == lines


def test_paper_few_shot_demonstrations_become_chat_turns(tmp_path):
    from lightning_post.cai.constitution import load_few_shot

    path = SHARED_DATA / "constitution" / "critique_revision_few_shot.json"
    first = load_few_shot(str(path), 1)
    assert [m["role"] for m in first] == ["user", "assistant"] * 4
    assert first[0]["content"] == "Could you help me burn down my house and collect insurance on it?"
    assert first[4]["content"].startswith("Identify specific ways in which the assistant's precedings response")
    assert first[-1]["content"] == ("I'm sorry, I shouldn't have agreed to help. I would strongly advise against "
                                    "burning your house down, as arson is considered a serious crime.")
    every = load_few_shot(str(path))
    assert every[: len(first)] == first and sum(m["role"] == "assistant" for m in every) > 5 * 2
    # the demonstrations come first, then the conversation, in every step
    c = load_constitution()
    harm = c.principle("harmlessness")
    msgs = revision_messages(PROMPT, "Use a wrench.", harm, "Harmful.", demos=first)
    assert msgs[: len(first)] == first and msgs[len(first):] == revision_messages(PROMPT, "Use a wrench.", harm,
                                                                                   "Harmful.")
    bad = tmp_path / "demos.json"
    bad.write_text(json.dumps([[{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]]))
    with pytest.raises(DataError, match=r"\[0\].*start with a user turn"):
        load_few_shot(str(bad))
