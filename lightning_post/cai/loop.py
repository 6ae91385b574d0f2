"""The Constitutional AI generation loops (Bai et al. 2022, sections 3 and 4).

:func:`critique_revision` (SL-CAI data) and :func:`ai_feedback` (RL-CAI data) run a causal LM through
:class:`~lightning_post.generation.ChatGenerator`: batched chat generation with a KV cache, and probabilities of fixed answer options read from
the model's own log-likelihoods (never by searching generated text for a word).
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from lightning_post.cai.constitution import (
    Constitution, Principle, critique_messages, feedback_messages, revise_question_messages, revision_messages,
)
from lightning_post.generation import ChatGenerator


def soft_label(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Probability ``(N,)`` that answer 1 is the better one, averaged over both orderings (cancels position bias).

    ``first[:, 0]`` is P((A)) when answer 1 was shown as (A); ``second[:, 1]`` is P((B)) when it was shown as (B).

    >>> soft_label(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.7, 0.3]]))  # a judge that favours (A)
    tensor([0.6000])
    """
    return (first[:, 0] + second[:, 1]) / 2


def choose_principle(constitution: Constitution, item_id: str, round: int, how: str, seed: int) -> Principle:
    """``sample``: a principle drawn per (prompt, round), seeded so a resumed run draws the same one; ``cycle``:
    principle ``round mod len(constitution)``."""
    if how == "cycle":
        return constitution.principles[round % len(constitution)]
    if how == "sample":
        return random.Random(f"{seed}:{item_id}:{round}").choice(constitution.principles)
    raise ValueError(f"principle_choice must be 'sample' or 'cycle', got {how!r}")


def critique_revision(gen: ChatGenerator, items: Sequence[dict], constitution: Constitution, rounds: int = 1,
                      principle_choice: str = "sample", threshold: float = 0.5, seed: int = 0,
                      demos: Sequence[dict] = ()) -> list[dict]:
    """Critique -> revision records for prompt ``items`` (``{"id", "prompt": messages}``), one per item per round.

    1. initial answer: the model answers each prompt;
    2. principle: one per prompt and round (:func:`choose_principle`);
    3. critique: the model critiques the current answer under the principle's critique request;
    4. decision: the model is asked whether the answer needs a revision; ``p_revise`` is its probability of the yes
       word, normalised over yes and no; it revises when ``p_revise >= threshold``;
    5. revision: the model rewrites the answer under the revision request (otherwise the answer stands), and the
       result is the answer of the next round.

    ``demos`` (few-shot critique/revision demonstrations as chat turns, :func:`load_few_shot`) precede the
    conversation in steps 3-5, as in the paper.
    """
    prompts = [it["prompt"] for it in items]
    # step 1: initial answers
    answers = gen.generate(prompts, desc="initial answers")
    initial = list(answers)
    records: list[dict] = []
    for r in range(rounds):
        # step 2: principles
        principles = [choose_principle(constitution, it["id"], r, principle_choice, seed) for it in items]
        # step 3: critiques
        critiques = gen.generate([critique_messages(p, a, pr, demos) for p, a, pr in zip(prompts, answers, principles)],
                                 desc=f"critiques (round {r + 1})")
        # step 4: does the answer need a revision? P(yes) / (P(yes) + P(no)) of the model's own reply
        asks = [revise_question_messages(p, a, pr, c, constitution, demos)
                for p, a, pr, c in zip(prompts, answers, principles, critiques)]
        p_revise = gen.option_probs(asks, [constitution.answer_yes, constitution.answer_no],
                                    desc=f"revision decisions (round {r + 1})")[:, 0].tolist()
        # step 5: revisions where needed
        todo = [i for i, p in enumerate(p_revise) if p >= threshold]
        revised = gen.generate([revision_messages(prompts[i], answers[i], principles[i], critiques[i], demos)
                                for i in todo],
                               desc=f"revisions (round {r + 1})") if todo else []
        new_answers = list(answers)
        for i, text in zip(todo, revised):
            new_answers[i] = text
        for i, it in enumerate(items):
            records.append({
                "id": it["id"], "round": r, "prompt": prompts[i], "initial": initial[i], "answer": answers[i],
                "principle": principles[i].name, "critique_request": principles[i].critique_request,
                "critique": critiques[i], "p_revise": p_revise[i], "revised": i in todo,
                "revision_request": principles[i].revision_request, "revision": new_answers[i],
            })
        answers = new_answers
    return records


def ai_feedback(gen: ChatGenerator, items: Sequence[dict], constitution: Constitution, temperature: float = 1.0,
                principle_choice: str = "sample", seed: int = 0) -> list[dict]:
    """AI-labelled preference pairs for prompt ``items``: one record per prompt whose two answers differ.

    1. two answers per prompt, sampled at ``temperature``;
    2. a principle per prompt; its comparison question is asked as a multiple choice (A) / (B);
    3. the feedback model's probabilities of ``(A`` and ``(B``, normalised over the two, with answer 1 shown as (A),
       then again with the answers swapped;
    4. soft label: P(answer 1 is better) averaged over both orderings (:func:`soft_label`); the better answer becomes
       ``chosen`` and ``label`` is the probability that it is (>= 0.5).
    """
    prompts = [it["prompt"] for it in items]
    # step 1: two samples per prompt
    sampled = gen.generate([p for p in prompts for _ in range(2)], desc="feedback samples", temperature=temperature)
    pairs = [(sampled[2 * i], sampled[2 * i + 1]) for i in range(len(items))]
    keep = [i for i, (a, b) in enumerate(pairs) if a.strip() != b.strip()]
    # step 2: principles
    principles = {i: choose_principle(constitution, items[i]["id"], 0, principle_choice, seed) for i in keep}
    # step 3: both orderings
    options = ["A", "B"]
    first = gen.option_probs([feedback_messages(prompts[i], *pairs[i], principles[i], constitution) for i in keep],
                             options, constitution.answer_prefix, desc="AI feedback (A, B)")
    second = gen.option_probs([feedback_messages(prompts[i], *pairs[i][::-1], principles[i], constitution)
                               for i in keep], options, constitution.answer_prefix, desc="AI feedback (B, A)")
    # step 4: soft labels
    p1 = soft_label(first, second) if keep else torch.zeros(0)
    records = []
    for j, i in enumerate(keep):
        one_better = bool(p1[j] >= 0.5)
        a, b = pairs[i]
        records.append({
            "id": items[i]["id"], "prompt": prompts[i], "chosen": a if one_better else b,
            "rejected": b if one_better else a, "label": float(p1[j] if one_better else 1 - p1[j]),
            "principle": principles[i].name, "p_first_ordering": first[j].tolist(),
            "p_second_ordering": second[j].tolist(),
        })
    return records
