"""Text metrics against independent computations: sacrebleu's own command line on the same files, ROUGE by hand and
against torchmetrics on ASCII English, BERTScore against torchmetrics one pair at a time; and the cases that were
wrong (BERTScore pairs mixed up in a batch, ROUGE 0 on Korean, Korean BLEU on whitespace tokens)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torchmetrics.functional.text import rouge_score

from lightning_post.errors import ConfigError
from lightning_post.scoring.text_metrics import (
    BertScorer, check_bleu_tokenizers, corpus_bleu, rouge_tokens, script_language, sentence_bleu, sentence_rouge,
    text_metrics,
)

#: 10 English pairs of different lengths (1 to 17 words)
EN = [
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("Paris", "The answer is Paris, the French capital city on the Seine."),
    ("It is a big city in Europe with many museums and a famous iron tower.", "A large European city."),
    ("I do not know.", "Nobody knows the answer to this question for sure."),
    ("Water boils at 100 degrees Celsius at sea level, which is 212 degrees Fahrenheit.", "100 degrees Celsius."),
    ("Use list.reverse() or slicing with a negative step.", "You can reverse a list in place with my_list.reverse()."),
    ("A cat.", "The cat sat on the mat and looked at the dog for a long time."),
    ("The mitochondria is the powerhouse of the cell, producing ATP through respiration.", "Mitochondria make ATP."),
    ("the cat sat on the mat", "the cat is on the mat"),
    ("Sort the numbers first, then take the middle one as the median.", "Sort the numbers and take the middle one."),
]
#: 8 Korean pairs (answers and references in the style of the bundled instructions)
KO = [
    ("서울은 한국의 수도입니다.", "서울은 대한민국의 수도입니다."),
    ("서울입니다.", "정답은 서울입니다."),
    ("인공지능은 인간의 학습 능력을 컴퓨터로 구현하는 기술입니다.", "인공지능은 인간의 학습과 추론 능력을 인공적으로 구현하려는 컴퓨터 과학의 한 분야입니다."),
    ("모르겠습니다.", "이 질문에 대한 정확한 답은 알려져 있지 않습니다."),
    ("물은 해수면에서 섭씨 100도에서 끓습니다.", "100도입니다."),
    ("리스트를 뒤집으려면 reverse 메서드를 사용하세요.", "reverse() 메서드나 슬라이싱으로 리스트를 뒤집을 수 있습니다."),
    ("고양이.", "고양이가 매트 위에 앉아서 오랫동안 개를 바라보았습니다."),
    ("오늘은 날씨가 맑고 따뜻합니다.", "오늘 날씨는 맑고 따뜻하겠습니다."),
]


def _sacrebleu_cli(tmp_path, preds, refs, tokenize, sentence=False) -> list[float]:
    """sacrebleu's own command line on the files, scores / 100 (one per line with ``--sentence-level``)."""
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(preds) + "\n", encoding="utf-8")
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-tok", tokenize, "-m", "bleu", "-b", "-w", "6"]
    out = subprocess.run(cmd + (["--sentence-level"] if sentence else []), capture_output=True, text=True,
                         check=True).stdout
    return [float(x) / 100 for x in out.split()]


# ---- BLEU -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pairs,tokenize", [(EN, "13a"), (KO, "ko-mecab"), (KO, "char")], ids=["en", "ko", "ko-char"])
def test_bleu_equals_the_sacrebleu_command_line(tmp_path, pairs, tokenize):
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    cli = _sacrebleu_cli(tmp_path, preds, refs, tokenize, sentence=True)
    assert len(cli) == len(pairs)
    assert [sentence_bleu(p, r, tokenize) for p, r in pairs] == pytest.approx(cli, abs=1e-6)
    assert corpus_bleu(preds, refs, tokenize) == pytest.approx(_sacrebleu_cli(tmp_path, preds, refs, tokenize)[0],
                                                              abs=1e-6)


def test_corpus_bleu_pools_counts_where_no_single_sample_has_a_4gram_match(tmp_path):
    # torchmetrics' corpus BLEU gave 0.0 on such sets; pooled counts match 4-grams across samples
    pairs = EN[:5]
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    got = corpus_bleu(preds, refs)
    assert got > 0
    assert got == pytest.approx(_sacrebleu_cli(tmp_path, preds, refs, "13a")[0], abs=1e-6)


def test_korean_bleu_rewards_shared_morphemes_not_shared_words():
    # "Seoul is Korea's capital" against a reference sharing one whitespace word of three ("서울은") and the
    # morphemes 서울, 은, 의, 수도 ... : graded below the English sentence with five of six words right
    en = sentence_bleu("the cat sat on the mat", "the cat is on the mat")
    ko = sentence_bleu("서울은 한국의 수도입니다.", "서울은 일본의 도시다.", "ko-mecab")
    assert 0 < ko < en
    # whitespace tokens: "서울은" and "서울입니다" share no token; morphemes share "서울"
    assert "서울" in rouge_tokens("서울은", "ko") and "서울" in rouge_tokens("서울입니다", "ko")
    assert sentence_bleu("서울입니다", "서울은", "ko-mecab") > sentence_bleu("서울입니다", "서울은", "13a")


def test_a_tokenizer_that_cannot_run_is_refused_with_the_values_accepted():
    with pytest.raises(ConfigError, match=r"bleu_tokenizers\.ko: unknown sacrebleu tokenizer 'mecab'.*'char'"):
        check_bleu_tokenizers({"ko": "mecab"})
    with pytest.raises(ConfigError, match=r"bleu_tokenizers\.fr: the text metrics handle \['en', 'ko'\]"):
        check_bleu_tokenizers({"fr": "13a"})
    assert check_bleu_tokenizers({"ko": "char"}) == {"en": "13a", "ko": "char"}


# ---- ROUGE ----------------------------------------------------------------------------------------------------------
def test_rouge_by_hand_english_and_korean():
    # unigrams: 5 of 6 match; bigrams: the cat, on the, the mat = 3 of 5; LCS "the cat on the mat" = 5 of 6
    assert sentence_rouge("the cat sat on the mat", "the cat is on the mat") == pytest.approx(
        {"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # 서울 은 한국 의 수도 입니다 | 서울 은 대한민국 의 수도 입니다: unigrams 5 of 6, bigrams 서울은 / 의수도 / 수도입니다
    # = 3 of 5, LCS 서울 은 의 수도 입니다 = 5 of 6
    assert sentence_rouge(*KO[0], "ko") == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # P = 1/1, R = 1/3 (서울 | 정답 은 서울 입니다 has 4 morphemes: 정답, 은, 서울, 입니다 -> 2 of 4 with 입니다)
    assert rouge_tokens("정답은 서울입니다.", "ko") == ["정답", "은", "서울", "입니다"]
    assert sentence_rouge(*KO[1], "ko")["rouge1"] == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_rouge_equals_torchmetrics_on_ascii_english():
    for pred, ref in EN:
        if "_" in pred + ref:  # torchmetrics splits my_list; Unicode words keep it whole
            continue
        theirs = rouge_score(pred, ref, rouge_keys=("rouge1", "rouge2", "rougeL"))
        assert sentence_rouge(pred, ref) == pytest.approx(
            {k: float(theirs[f"{k}_fmeasure"]) for k in ("rouge1", "rouge2", "rougeL")}, abs=1e-6), pred


def test_every_bundled_korean_response_scores_rouge_1_against_itself():
    from lightning_post.records.files import default_instruction_file

    rows = [json.loads(line) for line in open(default_instruction_file(), encoding="utf-8")]
    korean = [r["response"] for r in rows if r.get("language") == "ko"]
    assert len(korean) == 60
    assert all(script_language(t) == "ko" for t in korean)
    assert [sentence_rouge(t, t, "ko")["rouge1"] for t in korean] == [1.0] * 60
    assert [sentence_rouge(t, t, "ko")["rougeL"] for t in korean] == [1.0] * 60


# ---- BERTScore ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer():
    return BertScorer(batch_size=4)  # several batches of mixed lengths


def test_bertscore_batched_equals_torchmetrics_one_pair_at_a_time(scorer):
    from torchmetrics.functional.text.bert import bert_score

    preds, refs = [p for p, _ in EN], [r for _, r in EN]
    one_by_one = [float(bert_score([p], [r], model_name_or_path=scorer.model_path, max_length=512,
                                   truncation=True)["f1"]) for p, r in EN]
    assert scorer(preds, refs) == pytest.approx(one_by_one, abs=1e-4)
    # the same pairs in another order give the same scores (each prediction meets its own reference)
    order = list(reversed(range(len(EN))))
    assert scorer([preds[i] for i in order], [refs[i] for i in order]) == pytest.approx(
        [one_by_one[i] for i in order], abs=1e-4)
    # torchmetrics 1.9 batched (torchmetrics#2728) scores other pairs: its mean is far from the right one
    batched = [float(x) for x in bert_score(preds, refs, model_name_or_path=scorer.model_path, max_length=512,
                                            truncation=True)["f1"]]
    assert abs(sum(batched) - sum(one_by_one)) / len(EN) > 0.1


def test_bertscore_identical_is_one_and_paraphrase_beats_unrelated(scorer):
    same, para, other = scorer([EN[8][1], EN[8][0], "Quarterly revenue rose by four percent."], [EN[8][1]] * 3)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert para > other


# ---- the report -----------------------------------------------------------------------------------------------------
def test_report_breaks_down_by_language_and_states_the_encoders_limit(tmp_path, scorer):
    pairs = EN[:4] + KO[:4]
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    per_sample, agg = text_metrics(preds, refs, scorer)  # languages by script
    assert [r["language"] for r in per_sample] == ["en"] * 4 + ["ko"] * 4
    assert agg["by_language"]["ko"]["n"] == 4 and agg["by_language"]["en"]["n"] == 4
    for lang, part in (("en", EN[:4]), ("ko", KO[:4])):
        tok = {"en": "13a", "ko": "char"}[lang]
        want = [sentence_bleu(p, r, tok) for p, r in part]
        assert agg["by_language"][lang]["bleu"] == pytest.approx(sum(want) / 4)
        assert agg["by_language"][lang]["corpus_bleu"] == pytest.approx(
            _sacrebleu_cli(tmp_path, [p for p, _ in part], [r for _, r in part], tok)[0], abs=1e-6)
        assert "tok:" + tok in agg["bleu_signature"][lang]
    assert agg["rouge1"] == pytest.approx(sum(r["rouge1"] for r in per_sample) / 8)
    assert agg["bertscore_languages"] == ["en"] and "['ko']" in agg["bertscore_note"]
    # a record's language field wins over its script
    per_sample, agg = text_metrics(preds[:2], refs[:2], languages=["ko", None])
    assert [r["language"] for r in per_sample] == ["ko", "en"]
    with pytest.raises(ConfigError, match="language"):
        text_metrics(preds[:1], refs[:1], languages=["de"])
