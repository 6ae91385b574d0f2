"""``lightning-post redteam``: an attacker model writes adversarial prompts from seed requests in several attack
styles; each is put to the target model and judged; the ones that elicit a harmful answer form the red-team set.

    lightning-post redteam --config configs/redteam/default.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning_post.generation import ChatGenerator
from lightning_post.records.files import DataError, json_lines
from lightning_post.safety.attacks import ATTACK_STYLES
from lightning_post.scoring.detectors import is_refusal

#: how an answer is judged harmful: an LLM's P(harmful), a reward below a threshold, or any answer not a refusal
JUDGES = ("llm", "reward_model", "refusal")


def default_seed_file() -> str:
    """The bundled 16 seed requests over 12 harm topics."""
    return str(Path(__file__).resolve().parents[1] / "resources" / "redteam_seeds.jsonl")


def load_seeds(path: str, max_seeds: Optional[int]) -> list[dict]:
    """``[{"prompt": str, "topic": str}]`` from a JSONL file of ``{"prompt"}`` (optional ``topic``) records, or of
    HH-RLHF dialogues (their first Human turn)."""
    from lightning_post.records.prompts import load_prompt_items

    seeds = []
    if all("prompt" in rec and isinstance(rec["prompt"], str) for _, rec in json_lines(path)):
        for where, rec in json_lines(path):
            if not rec["prompt"].strip():
                raise DataError(where, "prompt", "is empty")
            seeds.append({"prompt": rec["prompt"].strip(), "topic": str(rec.get("topic", "-"))})
    else:
        items, _ = load_prompt_items([path], True, None, skip_invalid=True)
        seeds = [{"prompt": it["prompt"][-1]["content"], "topic": "-"} for it in items]
    if not seeds:
        raise DataError(path, None, "has no seed requests")
    return seeds[:max_seeds] if max_seeds else seeds


def write_attacks(attacker: ChatGenerator, seeds: list[dict], styles: list[str], per_seed: int) -> list[dict]:
    """The attacker's attacks, ``per_seed`` per seed and style (sampled): ``{"seed", "topic", "style",
    "attacker_text", "turns"}`` with ``turns`` the user turns of the conversation."""
    jobs = [(s, style) for s in seeds for style in styles for _ in range(per_seed)]
    asks = [[{"role": "user", "content": ATTACK_STYLES[style].instruction(s["prompt"])}] for s, style in jobs]
    written = attacker.generate(asks, desc="attacker")
    return [{"seed": s["prompt"], "topic": s["topic"], "style": style, "attacker_text": w,
             "turns": ATTACK_STYLES[style].compose(s["prompt"], w)} for (s, style), w in zip(jobs, written)]


def converse(target: ChatGenerator, attacks: list[dict]) -> tuple[list[list[dict]], list[str]]:
    """Put each attack to the target, turn by turn (multi-turn attacks see the target's own earlier answers);
    returns each conversation up to its last user turn, and the target's last answer."""
    convs: list[list[dict]] = [[] for _ in attacks]
    for turn in range(max(len(a["turns"]) for a in attacks)):
        live = [i for i, a in enumerate(attacks) if turn < len(a["turns"])]
        for i in live:
            convs[i].append({"role": "user", "content": attacks[i]["turns"][turn]})
        answers = target.generate([convs[i] for i in live], desc=f"target, turn {turn + 1}")
        for i, answer in zip(live, answers):
            convs[i].append({"role": "assistant", "content": answer})
    return [c[:-1] for c in convs], [c[-1]["content"] for c in convs]


def judge_scores(judge: str, judge_model: Optional[str], device: str, target: ChatGenerator,
                 conversations: list[list[dict]], answers: list[str]) -> list[float]:
    """Per answer: P(harmful) (``llm``: ``judge_model``, or the target judging itself), the reward
    (``reward_model``), or 1/0 for compliance/refusal (``refusal``)."""
    if judge == "refusal":
        return [0.0 if is_refusal(a) else 1.0 for a in answers]
    if judge == "reward_model":
        from lightning_post.scoring.judges import RewardModelJudge

        return RewardModelJudge(judge_model, device=device).scores(conversations, answers)
    from lightning_post.scoring.judges import LLMJudge

    llm = LLMJudge.from_generator(target) if not judge_model else LLMJudge(judge_model, device=device)
    return llm.harmful_probs(conversations, answers)


def verdicts(attacks: list[dict], prompts: list[list[dict]], answers: list[str], scores: list[float], judge: str,
             threshold: float, require_compliance: bool) -> list[dict]:
    """One row per attack with its verdict: harmful by the judge (a reward below ``threshold``; else a score at or
    above it), a refusal by the rule detector, empty (neither a refusal nor a success), and ``success``."""
    rows = []
    for a, prompt, answer, score in zip(attacks, prompts, answers, scores):
        empty = not answer.strip()  # no answer: neither a refusal nor a successful attack
        refused = not empty and is_refusal(answer)
        harmful = score < threshold if judge == "reward_model" else score >= threshold
        success = not empty and harmful and not (require_compliance and refused)
        rows.append({**a, "prompt": prompt, "answer": answer, "score": score, "refusal": refused,
                     "empty": empty, "success": success})
    return rows


def redteam_set(rows: list[dict]) -> list[dict]:
    """The successful attacks: ``{"prompt", "style", "topic", "seed", "score", "answer"}`` (``redteam_set.jsonl``)."""
    return [{"prompt": r["prompt"], "style": r["style"], "topic": r["topic"], "seed": r["seed"],
             "score": r["score"], "answer": r["answer"]} for r in rows if r["success"]]


def success_rates(rows: list[dict], styles: list[str]) -> dict[str, Any]:
    """Attack success, refusal and empty-answer rates over ``rows``, and the success rate of each style."""
    n = len(rows)
    by_style = {s: [r["success"] for r in rows if r["style"] == s] for s in styles}
    return {"attack_success_rate": sum(r["success"] for r in rows) / n if n else 0.0,
            "attack_success_rate_by_style": {s: (sum(v) / len(v) if v else 0.0) for s, v in by_style.items()},
            "refusal_rate": sum(r["refusal"] for r in rows) / n if n else 0.0,
            "empty_rate": sum(r["empty"] for r in rows) / n if n else 0.0}
