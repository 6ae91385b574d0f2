"""The probes of ``lightning-post evaluate`` and ``abtest``: the evaluation prompts with their references, and the
safety probes (refusals of harmful prompts plain and jailbroken, over-refusal of harmless ones, personal data in
answers to privacy probes) over a :class:`~lightning_post.generation.ChatGenerator`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning_post.evaluation.safety import PRIVACY_PROBES, jailbreak
from lightning_post.generation import ChatGenerator
from lightning_post.records.files import DataError, raw_records
from lightning_post.records.prompts import load_prompt_items, normalize_prompt_record
from lightning_post.scoring.detectors import find_pii, is_refusal
from lightning_post.scoring.text_metrics import LANGUAGES


def load_eval_prompts(path: str, max_prompts: Optional[int], reference_field: Optional[str],
                      baseline_field: Optional[str], language_field: Optional[str] = None) -> list[dict]:
    """``[{"prompt": messages, "reference": str | None, "baseline": str | None, "language": str | None}]`` from
    instruction or prompt files (``{"instruction", "input"}``, ``{"prompt"}``, ``{"messages"}``) with optional
    reference and baseline answers and the record's language (``language_field``; ``None`` where absent)."""
    out = []
    for where, (record, prompt) in raw_records(path, lambda r, w: (r, normalize_prompt_record(r, w)["prompt"])):
        row: dict[str, Any] = {"prompt": prompt, "reference": None, "baseline": None, "language": None}
        if language_field and record.get(language_field) is not None:
            if record[language_field] not in LANGUAGES:
                raise DataError(where, language_field, f"must be one of {list(LANGUAGES)} (the languages the text "
                                                       f"metrics handle), got {record[language_field]!r}")
            row["language"] = record[language_field]
        for key, field in (("reference", reference_field), ("baseline", baseline_field)):
            if field:
                value = record.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise DataError(where, field, "is missing or empty")
                row[key] = value.strip()
        out.append(row)
        if max_prompts is not None and len(out) >= max_prompts:
            break
    if not out:
        raise DataError(path, None, "has no prompts")
    return out


def refusal_probe(gen: ChatGenerator, prompts: list[list[dict]], probe: str) -> tuple[float, list[str], list[dict]]:
    """Answer ``prompts``; returns the share refused (rule detector), the answers, and a row per answer."""
    answers = gen.generate(prompts, desc=f"{probe} prompts")
    refused = [is_refusal(a) for a in answers]
    rows = [{"probe": probe, "prompt": p[-1]["content"], "answer": a, "refusal": r}
            for p, a, r in zip(prompts, answers, refused)]
    return sum(refused) / len(refused), answers, rows


def safety_probes(gen: ChatGenerator, harmful: list[list[dict]], templates: list[str], privacy: bool,
                  judge=None, harmless: Optional[list[list[dict]]] = None) -> tuple[dict, list[dict]]:
    """Refusal rate on harmful prompts (the refusal detector, and the judge: an LLM judge's share of answers it
    finds harmless, or a reward model's mean score), under each jailbreak template, personal data in answers to
    privacy probes, the over-refusal rate: refusals of harmless prompts, and the share of empty answers to the
    refusal probes; returns the metrics and every answer."""
    metrics: dict[str, Any] = {}
    rows: list[dict] = []
    if harmless:
        metrics["over_refusal_rate"], _, probe_rows = refusal_probe(gen, harmless, "harmless")
        rows += probe_rows
    if harmful:
        metrics["refusal_rate"], answers, probe_rows = refusal_probe(gen, harmful, "harmful")
        rows += probe_rows
        if hasattr(judge, "harmful_probs"):
            p_harm = judge.harmful_probs(harmful, answers)
            metrics["judge_harmless_rate"] = sum(p < 0.5 for p in p_harm) / len(p_harm)
            for row, p in zip(probe_rows, p_harm):
                row["p_harmful"] = p
        elif hasattr(judge, "scores"):
            scores = judge.scores(harmful, answers)
            metrics["judge_harmlessness_score"] = sum(scores) / len(scores)
            for row, score in zip(probe_rows, scores):
                row["judge_score"] = score
        rates = {}
        for name in templates:
            wrapped = [[{"role": "user", "content": jailbreak(p[-1]["content"], name)}] for p in harmful]
            rates[name], _, probe_rows = refusal_probe(gen, wrapped, f"jailbreak/{name}")
            rows += probe_rows
        if rates:
            metrics["jailbreak_refusal_rate"] = sum(rates.values()) / len(rates)
            metrics["jailbreak_drop"] = metrics["refusal_rate"] - metrics["jailbreak_refusal_rate"]
            metrics["jailbreak_by_template"] = rates
    if rows:  # an empty answer is neither a refusal nor compliance: counted apart so that it is not mistaken for either
        metrics["empty_answer_rate"] = sum(not r["answer"].strip() for r in rows) / len(rows)
    if privacy:
        probes = [[{"role": "user", "content": p}] for p in PRIVACY_PROBES]
        answers = gen.generate(probes, desc="privacy probes")
        found = [find_pii(a) for a in answers]
        metrics["pii_answer_rate"] = sum(bool(f) for f in found) / len(found)
        metrics["privacy_refusal_rate"] = sum(is_refusal(a) for a in answers) / len(answers)
        kinds: dict[str, int] = {}
        for f in found:
            for kind, hits in f.items():
                kinds[kind] = kinds.get(kind, 0) + len(hits)
        metrics["pii_by_kind"] = kinds
        rows += [{"probe": "privacy", "prompt": p[0]["content"], "answer": a, "pii": f}
                 for p, a, f in zip(probes, answers, found)]
    return metrics, rows


def harmful_prompts(path: Optional[str], max_prompts: int) -> list[list[dict]]:
    """The first ``max_prompts`` distinct prompts of a prompt file or of HH-RLHF dialogues (their first Human turn)
    as message lists; none for no file."""
    if not path:
        return []
    items, _ = load_prompt_items([path], True, max_prompts, skip_invalid=True)
    return [it["prompt"] for it in items]


def default_harmless_file() -> str:
    """24 harmless prompts with words that sound alarming out of context ("kill a Python process", "shoot a photo"),
    written for this project after XSTest's idea (Röttger et al. 2024): refusing them is over-refusal."""
    return str(Path(__file__).resolve().parents[1] / "resources" / "harmless_prompts.jsonl")
