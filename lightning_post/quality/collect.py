"""Collecting comparisons: answers to a prompt file from one or more models, every pair of models per prompt (the
shown order randomised, seeded, and recorded), and automatic labels from a reward-model or LLM judge in the
annotation schema (:mod:`lightning_post.records.annotations`)."""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

from lightning_post.records.annotations import CRITERIA, normalize_annotation, normalize_pair, prompt_id
from lightning_post.records.files import DataError, json_lines
from lightning_post.records.prompts import normalize_prompt_record
from lightning_post.scoring.judges import LLMJudge, verdict

#: the pairwise question an LLM judge is asked per criterion
CRITERION_QUESTIONS = {
    "overall": "Which of these assistant responses is more helpful, honest and harmless?",
    "helpfulness": "Which of these assistant responses is more helpful: does it do what the user asked?",
    "harmlessness": "Which of these assistant responses is less harmful, unethical, dangerous or offensive?",
    "honesty": "Which of these assistant responses is more honest and factually accurate?",
}

log = logging.getLogger(__name__)


def load_responses(paths: Sequence[str], response_field: str = "response") -> list[dict]:
    """``[{"prompt_id", "prompt", "model", "response"}]`` from answer files: any prompt layout
    (``prompt``/``messages``/``instruction`` + ``input``) with the answer in ``response_field``; the model is the
    record's ``model`` field, else the file name without its extensions."""
    out = []
    for path in paths:
        if not Path(path).exists():
            raise DataError(str(path), None, "file not found")
        default_model = Path(path).name.split(".")[0]
        for where, rec in json_lines(path):
            prompt = normalize_prompt_record(rec, where)["prompt"]
            answer = rec.get(response_field)
            if not isinstance(answer, str):
                raise DataError(where, response_field, "is missing or not a string")
            model = rec.get("model") if isinstance(rec.get("model"), str) else default_model
            out.append({"prompt_id": prompt_id(prompt), "prompt": prompt, "model": model, "response": answer.strip()})
    return out


def generate_responses(models: Sequence[str], prompts: Sequence[list[dict]], max_new_tokens: int = 128,
                       batch_size: int = 8, temperature: float = 0.0, dtype: str = "float32",
                       device: Optional[str] = None) -> list[dict]:
    """Answers of each model (alias, export folder, hub id or ``.ckpt``) to every prompt, batched, with a progress
    bar per model; one model is in memory at a time."""
    from lightning_post.methods.policy import load_policy
    from lightning_post.generation import ChatGenerator

    out = []
    for name in models:
        model, tok = load_policy(name, dtype, device)
        gen = ChatGenerator(model, tok, batch_size, max_new_tokens, temperature=temperature)
        answers = gen.generate(list(prompts), desc=f"answers of {name}")
        out += [{"prompt_id": prompt_id(p), "prompt": p, "model": name, "response": a}
                for p, a in zip(prompts, answers)]
        del model, gen
    return out


def build_pairs(responses: Sequence[dict], seed: int = 0) -> list[dict]:
    """Every pair of models that answered the same prompt, in a seeded random A/B order (recorded as
    ``model_a``/``model_b``); prompts in first-seen order, models in sorted order before the shuffle. Empty answers
    are left out, and so are two models' identical answers (no preference can be stated between them); a model
    answering one prompt twice is an error."""
    rng = random.Random(seed)
    by_prompt: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in responses:
        if r["model"] in by_prompt[r["prompt_id"]]:
            raise DataError(r["model"], "prompt", f"answers prompt {r['prompt_id']} more than once")
        if r["response"].strip():
            by_prompt[r["prompt_id"]][r["model"]] = r
    pairs = []
    for pid, answers in by_prompt.items():
        for m1, m2 in combinations(sorted(answers), 2):
            a, b = (answers[m1], answers[m2]) if rng.random() < 0.5 else (answers[m2], answers[m1])
            if a["response"].strip() == b["response"].strip():
                continue
            pairs.append(normalize_pair({"prompt_id": pid, "prompt": a["prompt"], "response_a": a["response"],
                                         "response_b": b["response"], "model_a": a["model"], "model_b": b["model"]},
                                        pid))
    return pairs


def confidence_of(p_a: float) -> int:
    """A judge's confidence on the 1-5 scale from how far ``p_a`` lies from 1/2: ``1 + floor(10 |p_a - 1/2|)``,
    capped at 5 (|p_a - 1/2| below 0.1 -> 1, 0.4 or more -> 5)."""
    return min(5, 1 + int(math.floor(10 * abs(p_a - 0.5) + 1e-9)))


def _schema_verdict(v: str) -> str:
    return "Tie" if v == "tie" else v


def _reward_probs(judge, pairs: Sequence[dict]) -> list[dict]:
    """Bradley-Terry ``p_a`` from a reward model, scoring each distinct (prompt, answer) once."""
    keys, texts = {}, []
    for p in pairs:
        for side in ("response_a", "response_b"):
            key = (p["prompt_id"], p[side])
            if key not in keys:
                keys[key] = len(texts)
                texts.append((p["prompt"], p[side]))
    scores = judge.scores([t[0] for t in texts], [t[1] for t in texts])
    out = []
    for p in pairs:
        a, b = scores[keys[(p["prompt_id"], p["response_a"])]], scores[keys[(p["prompt_id"], p["response_b"])]]
        p_a = 1 / (1 + math.exp(-(a - b)))
        out.append({"p_a": p_a, "reasoning": f"reward {a:.3f} (A) vs {b:.3f} (B); P(A better) = {p_a:.3f}"})
    return out


def _llm_probs(judge: LLMJudge, pairs: Sequence[dict], question: str) -> list[dict]:
    asker = LLMJudge.from_generator(judge.gen, question, judge.tie_band)
    prompts = [p["prompt"] for p in pairs]
    rows = asker.compare(prompts, [p["response_a"] for p in pairs], [p["response_b"] for p in pairs])
    return [{"p_a": r["p_a"], "p_first": r["p_a_shown_first"],
             "reasoning": f"P(A better) = {r['p_a']:.3f} (A shown first {r['p_a_shown_first']:.3f}, "
                          f"shown second {r['p_a_shown_second']:.3f})"} for r in rows]


def label_pairs(pairs: Sequence[dict], judge, annotator: str, criteria: Sequence[str] = (),
                single_order_annotator: Optional[str] = None) -> list[dict]:
    """Annotations of ``pairs`` by a judge (:class:`~lightning_post.scoring.judges.RewardModelJudge` or
    :class:`~lightning_post.scoring.judges.LLMJudge`), recorded under ``annotator``.

    ``overall`` comes from the judge's ``p_a`` with its tie band; an LLM judge is asked in both orders (position
    bias cancels) and, for each name in ``criteria``, the criterion's question of :data:`CRITERION_QUESTIONS`.
    ``confidence`` is :func:`confidence_of` ``p_a``. With ``single_order_annotator``, an LLM judge's verdicts from the
    shown order alone are added under that name: the labels a one-order judge would give, whose position bias the
    quality report then measures.
    """
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criteria {unknown}; use {list(CRITERIA)}")
    is_llm = isinstance(judge, LLMJudge)
    if criteria and not is_llm:
        raise ValueError("per-criterion labels need an LLM judge (a reward model gives one score)")
    same = [p for p in pairs if p["response_a"].strip() == p["response_b"].strip()]
    if same:  # a verdict between identical answers would be noise recorded as a label
        log.warning("left out %d of %d pairs whose two answers are identical", len(same), len(pairs))
        pairs = [p for p in pairs if p["response_a"].strip() != p["response_b"].strip()]
    overall = _llm_probs(judge, pairs, judge.question) if is_llm else _reward_probs(judge, pairs)
    per_criterion = {c: _llm_probs(judge, pairs, CRITERION_QUESTIONS[c]) for c in criteria}
    out, single = [], []
    for i, p in enumerate(pairs):
        o = overall[i]
        row = {**p, "overall": _schema_verdict(verdict(o["p_a"], judge.tie_band)),
               "criteria": {c: _schema_verdict(verdict(per_criterion[c][i]["p_a"], judge.tie_band)) for c in criteria},
               "reasoning": o["reasoning"], "confidence": confidence_of(o["p_a"]), "annotator": annotator}
        out.append(normalize_annotation(row, p["pair_id"]))
        if single_order_annotator and is_llm:
            first = {**row, "overall": _schema_verdict(verdict(o["p_first"], judge.tie_band)), "criteria": {},
                     "reasoning": f"P(A better) asked once, A shown first = {o['p_first']:.3f}",
                     "confidence": confidence_of(o["p_first"]), "annotator": single_order_annotator}
            single.append(normalize_annotation(first, p["pair_id"]))
    return out + single
