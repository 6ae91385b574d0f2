"""Training data for jailbreak defense (the command: ``lightning-post jailbreak-data``,
:mod:`lightning_post.commands.jailbreak_data`).

Harmful requests are wrapped in jailbreak templates (and red-team sets are added as they are) and paired with
refusals: SFT records (wrapped request -> refusal) and DPO pairs (chosen = a refusal, rejected = the model's own
compliant answer to the wrapped request). Ordinary helpful data is mixed in (``helpful_ratio`` helpful examples per
defense example) so that the model learns when to refuse, not to refuse everything, and so are harmless requests that
sound harmful (borderline prompts, answered by the model itself). A share of the harmful requests is held out, never
wrapped into training data, for measuring the trained model.

    lightning-post jailbreak-data --config configs/jailbreak_data/default.yaml
    lightning-post fit --config configs/dpo/jailbreak.yaml     # DPO on output_dir/pairs.jsonl
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from lightning_post.evaluation.safety import jailbreak
from lightning_post.records.files import DataError, json_lines
from lightning_post.safety.filter import prompt_and_reply
from lightning_post.scoring.detectors import is_refusal

log = logging.getLogger(__name__)
RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def load_refusals(path: str) -> list[str]:
    """Refusal texts (``{"response"}`` records); each must read as a refusal to the rule detector, so that the
    training target and the measurement agree."""
    out = []
    for where, rec in json_lines(path):
        text = rec.get("response") if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(where, "response", "must be a non-empty string")
        if not is_refusal(text):
            raise DataError(where, "response", "does not read as a refusal to the refusal detector")
        out.append(text.strip())
    if not out:
        raise DataError(path, None, "has no refusals")
    return out


def load_redteam_set(path: str) -> list[tuple[list[dict], str]]:
    """``(conversation, seed request)`` of each attack of a red-team set (``redteam_set.jsonl`` of
    ``lightning-post redteam``): the last user turn included, answers to earlier turns kept."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:  # the red team found no successful attack
        log.warning("%s: no successful attacks (an empty red-team set); nothing to add", path)
        return []
    out = []
    for where, rec in json_lines(path):
        prompt = rec.get("prompt") if isinstance(rec, dict) else None
        if not isinstance(prompt, list) or not prompt or prompt[-1].get("role") != "user":
            raise DataError(where, "prompt", "must be a message list ending with a user turn")
        out.append((prompt, str(rec.get("seed", ""))))
    return out


def hold_out(requests: list[str], n: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """A seeded random choice of ``n`` requests held out of training: their positions (sorted), and the training
    requests in file order."""
    order = list(range(len(requests)))
    rng.shuffle(order)
    return sorted(order[:n]), [requests[i] for i in sorted(order[n:])]


def defense_examples(requests: list[str], templates: list[str], per_request: int, include_plain: bool,
                     attacks: list[tuple[list[dict], str]], heldout: list[str], refusals: list[str],
                     rng: random.Random) -> tuple[list[dict], int]:
    """Each training request plain (``include_plain``) and wrapped in ``per_request`` drawn templates, then the
    red-team attacks as they are, except those built on a held-out request (they would leak it into training); each
    example with a drawn refusal. Returns ``[{"source", "request", "prompt", "refusal"}]`` and the attacks left out."""
    examples: list[dict] = []
    for req in requests:
        names = rng.sample(templates, per_request)
        variants = ([("plain", req)] if include_plain else []) + [(t, jailbreak(req, t)) for t in names]
        examples += [{"source": t, "request": req, "prompt": [{"role": "user", "content": text}]}
                     for t, text in variants]
    held = {h.strip().lower() for h in heldout}
    leaks = [(c, seed) for c, seed in attacks if seed.strip().lower() in held
             or any(h in " ".join(m["content"].lower() for m in c) for h in held)]
    examples += [{"source": "redteam", "request": c[-1]["content"], "prompt": c}
                 for c, seed in attacks if (c, seed) not in leaks]
    for d in examples:
        d["refusal"] = rng.choice(refusals)
    return examples, len(leaks)


def refusal_pairs(examples: list[dict], answers: list[str]) -> tuple[list[dict], int, int]:
    """DPO pairs: chosen = the example's refusal, rejected = the model's compliant answer; answers that refuse anyway
    or are empty make no pair. Returns the pairs and the counts of refused and of empty answers."""
    pairs, refused, empty = [], 0, 0
    for d, answer in zip(examples, answers):
        if not answer.strip():
            empty += 1
            continue
        if is_refusal(answer):
            refused += 1
            continue
        pairs.append({"prompt": d["prompt"], "chosen": d["refusal"], "rejected": answer, "source": d["source"]})
    return pairs, refused, empty


def borderline_examples(prompts: list[list[dict]], answers: list[str], refusals: list[str], repeats: int,
                        rng: random.Random) -> tuple[int, list[dict], list[dict]]:
    """Harmless requests that sound harmful: where the model answers, its answer is an SFT target and the chosen
    reply of a pair over a drawn refusal, each ``repeats`` times. Returns the number kept, the SFT records and the
    pairs."""
    kept = [(p, a.strip()) for p, a in zip(prompts, answers) if a.strip() and not is_refusal(a)]
    sft = [{"messages": [*p, {"role": "assistant", "content": a}], "source": "borderline"} for p, a in kept] * repeats
    pairs = [{"prompt": p, "chosen": a, "rejected": rng.choice(refusals), "source": "borderline"}
             for _ in range(repeats) for p, a in kept]
    return len(kept), sft, pairs


def helpful_pool(pairs: list[dict], instructions: list[dict], refusals: list[str], contrast: bool,
                 rng: random.Random) -> list[dict]:
    """Helpful preference pairs to mix in, and with ``contrast`` pairs built from the helpful instructions: chosen =
    the record's answer, rejected = a drawn refusal (refusing a harmless request is worse than answering it)."""
    pool = [{**r, "source": "helpful"} for r in pairs]
    if contrast:
        pool += [{"prompt": prompt_and_reply(r)[0], "chosen": r["response"], "rejected": rng.choice(refusals),
                  "source": "helpful_contrast"} for r in instructions if r.get("response")]
    return pool
