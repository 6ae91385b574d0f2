"""A tiny model that gives planted answers: the 2-layer Llama of the tests, trained in the test set-up until its greedy
answer to every planted prompt is exactly the planted text (and its judge verdicts the planted ones), so that the
evaluation commands' numbers can be derived by hand from the answers.

    path = train_parrot(tmp / "parrot", answers={("What is 2+2?",): "4."}, options={...})

``answers`` pairs a conversation with its planted answer; ``""`` plants an empty answer (end of text at once).
``options`` are ``(conversation, prefix, (option, other), 0)``: the option planted after the prefix of the reply,
as :meth:`~lightning_post.generation.ChatGenerator.option_probs` reads it (the LLM judge's ``A`` / ``B``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

Conversation = list[dict[str, str]]


def _context(tok, conv: Conversation) -> list[int]:
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def train_parrot(out: Path, answers: Sequence[tuple[Conversation, str]],
                 options: Sequence[tuple[Conversation, str, tuple[str, str], int]] = (), max_steps: int = 1500, seed: int = 0) -> str:
    """Train the tiny Llama's architecture from a fixed seed on the planted replies (loss on the reply tokens and the
    end-of-text token; on the option token for ``options``), then check every one with the generator the commands
    use; returns the saved folder. Fails if the planted answers are not all reproduced."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lightning_post.generation import ChatGenerator
    from lightning_post.models.loading import load_tokenizer, resolve_model_path

    base = resolve_model_path("tiny-llama")
    tok = load_tokenizer(base)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=torch.float32)
    rows = []  # (ids, positions whose next token is trained)
    for conv, answer in answers:
        ctx = _context(tok, conv)
        reply = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((ctx + reply, list(range(len(ctx) - 1, len(ctx) + len(reply) - 1))))
    for conv, prefix, choices, chosen in options:
        ids = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) + prefix + choices[chosen],
                  add_special_tokens=False).input_ids
        rows.append((ids, [len(ids) - 2]))
    width = max(len(r) for r, _ in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r, _ in rows])  # (N, T)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    at = [(i, p) for i, (_, ps) in enumerate(rows) for p in ps]
    row_idx, pos_idx = torch.tensor([i for i, _ in at]), torch.tensor([p for _, p in at])
    targets = ids[row_idx, pos_idx + 1]
    # the softmax runs over the tokens of the planted replies only (a 49k-token LM head on every step would cost
    # seconds on two cores); the check below reads the full vocabulary, as generation does
    vocab = torch.unique(targets)
    targets = torch.searchsorted(vocab, targets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    longest = max((len(ps) for _, ps in rows[: len(answers)]), default=1)
    gen = ChatGenerator(model, tok, batch_size=64, max_new_tokens=longest + 2, progress=False)
    for step in range(1, max_steps + 1):
        model.train()
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, T, d)
        logits = hidden[row_idx, pos_idx] @ model.lm_head.weight[vocab].T  # (trained positions, planted tokens)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 and loss.item() < 0.01 and _reproduces(gen, tok, answers, options):
            break
    else:
        raise AssertionError(f"the parrot did not learn its planted answers in {max_steps} steps (loss {loss:.3f})")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _reproduces(gen, tok, answers, options) -> bool:
    got = gen.generate([c for c, _ in answers])
    if got != [a.strip() for _, a in answers]:
        return False
    for conv, prefix, choices, chosen in options:
        if float(gen.option_probs([conv], list(choices), prefix)[0, chosen]) < 0.9:
            return False
    return True


def conversation(*turns: str) -> Conversation:
    """User and assistant turns, alternating, starting with the user."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
