"""The Constitutional AI generation loops (Bai et al. 2022, sections 3 and 4).

:func:`critique_revision` (SL-CAI data) and :func:`ai_feedback` (RL-CAI data) run a causal LM through
:class:`ChatGenerator`: batched chat generation with a KV cache, and probabilities of fixed answer options read from
the model's own log-likelihoods (never by searching generated text for a word).
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_post.cai.constitution import (
    Constitution, Messages, Principle, critique_messages, feedback_messages, revise_question_messages,
    revision_messages,
)


class ChatGenerator:
    """Batched generation and option scoring for chat prompts with ``model`` (a causal LM) and its tokenizer.

    ``temperature`` 0 answers greedily. Prompts longer than ``max_prompt_length`` tokens keep their last tokens.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 8, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, max_prompt_length: int = 1024, progress: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.top_p, self.max_prompt_length = temperature, top_p, max_prompt_length
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_text(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _batches(self, n: int, desc: str):
        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, disable=not self.progress or n <= self.batch_size, leave=False)

    @torch.no_grad()
    def generate(self, conversations: Sequence[Messages], desc: str = "generating",
                 temperature: Optional[float] = None) -> list[str]:
        """The model's next assistant turn for each conversation."""
        tok = self.tokenizer
        temperature = self.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature, "top_p": self.top_p, "top_k": 0} if temperature \
            else {"do_sample": False}
        was_training = self.model.training
        self.model.eval()
        out: list[str] = []
        for start in self._batches(len(conversations), desc):
            ids = [self.encode(self.context_text(c))[-self.max_prompt_length:]
                   for c in conversations[start: start + self.batch_size]]
            width = max(map(len, ids))
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids], device=self.device)
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=self.device)
            rows = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True,
                                       **sampling)  # (b, width + new): left padding, so every reply starts at width
            out += [tok.decode(r[width:], skip_special_tokens=True).strip() for r in rows]
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def option_logprobs(self, conversations: Sequence[Messages], options: Sequence[str], prefix: str = "",
                        desc: str = "scoring options") -> torch.Tensor:
        """``(N, C)`` log-likelihood of the assistant reply ``prefix + option`` for every conversation and option:
        the summed log-probs of its tokens after the chat template's generation prompt."""
        rows, spans = [], []
        for conv in conversations:
            context = self.context_text(conv)
            base = self.encode(context)
            for option in options:
                full = self.encode(context + prefix + option)
                if full[: len(base)] != base:
                    raise ValueError("the chat template's generation prompt does not tokenise as a prefix of the reply")
                keep = max(0, len(full) - self.max_prompt_length)  # drop the oldest tokens of long prompts
                rows.append(full[keep:])
                spans.append(len(base) - keep)
        out = []
        was_training = self.model.training
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        for start in self._batches(len(rows), desc):
            chunk, first = rows[start: start + self.batch_size], spans[start: start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=self.device)  # right padding
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=self.device)
            logps = F.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (b, T, V)
            token_logps = logps[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (b, T-1): token t+1 given <= t
            positions = torch.arange(1, width, device=self.device)[None]  # (1, T-1): index of the predicted token
            lengths = torch.tensor([len(r) for r in chunk], device=self.device)[:, None]
            starts = torch.tensor(first, device=self.device)[:, None]
            in_reply = (positions >= starts) & (positions < lengths)  # (b, T-1)
            out.append((token_logps * in_reply).sum(1))
        self.model.train(was_training)
        return torch.cat(out).view(len(conversations), len(options)).cpu()

    def option_probs(self, conversations: Sequence[Messages], options: Sequence[str], prefix: str = "",
                     desc: str = "scoring options") -> torch.Tensor:
        """``(N, C)`` probabilities of the options, normalised over the options."""
        return option_probs_from_logprobs(self.option_logprobs(conversations, options, prefix, desc))


def option_probs_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Normalise option log-likelihoods ``(N, C)`` into a distribution over the C options.

    >>> option_probs_from_logprobs(torch.log(torch.tensor([[0.2, 0.6]])))
    tensor([[0.2500, 0.7500]])
    """
    return torch.softmax(logprobs, -1)


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
                      principle_choice: str = "sample", threshold: float = 0.5, seed: int = 0) -> list[dict]:
    """Critique -> revision records for prompt ``items`` (``{"id", "prompt": messages}``), one per item per round.

    1. initial answer: the model answers each prompt;
    2. principle: one per prompt and round (:func:`choose_principle`);
    3. critique: the model critiques the current answer under the principle's critique request;
    4. decision: the model is asked whether the answer needs a revision; ``p_revise`` is its probability of the yes
       word, normalised over yes and no; it revises when ``p_revise >= threshold``;
    5. revision: the model rewrites the answer under the revision request (otherwise the answer stands), and the
       result is the answer of the next round.
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
        critiques = gen.generate([critique_messages(p, a, pr) for p, a, pr in zip(prompts, answers, principles)],
                                 desc=f"critiques (round {r + 1})")
        # step 4: does the answer need a revision? P(yes) / (P(yes) + P(no)) of the model's own reply
        asks = [revise_question_messages(p, a, pr, c, constitution)
                for p, a, pr, c in zip(prompts, answers, principles, critiques)]
        p_revise = gen.option_probs(asks, [constitution.answer_yes, constitution.answer_no],
                                    desc=f"revision decisions (round {r + 1})")[:, 0].tolist()
        # step 5: revisions where needed
        todo = [i for i, p in enumerate(p_revise) if p >= threshold]
        revised = gen.generate([revision_messages(prompts[i], answers[i], principles[i], critiques[i]) for i in todo],
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
