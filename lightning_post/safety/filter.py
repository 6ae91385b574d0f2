"""Safety filtering of training data: rules (personal data, regexes, blocked words) and model classifiers (a reward
model's threshold, an LLM harm judge) that any data module applies to its normalised records before tokenising.

    data:
      init_args:
        safety_filter:
          rules: [pii, blocklist]
          blocklist: [nerve agent]
          reward_model: exports/reward/model     # drop records whose reply scores below reward_threshold
          reward_threshold: -1.0
          dry_run: true                          # only report what would be removed

Each removed record gets its reasons (``pii:email``, ``regex:<name>``, ``blocklist``, ``reward_model``, ``judge``)
with the field and the text that matched; the data module reports counts by reason (MLflow metrics
``safety_filter/<split>_removed/<reason>``) and a sample of removed records (artifact
``safety_filter/removed_sample.json``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from lightning_post.errors import UserError
from lightning_post.scoring.detectors import PII_PATTERNS, find_pii
from lightning_post.scoring.judges import LLMJudge
from lightning_post.scoring.rewards import RewardModelScorer

log = logging.getLogger(__name__)


@dataclass
class SafetyFilter:
    """What the safety filter removes.

    Attributes:
        rules: rule names from :data:`SAFETY_RULES`: ``pii`` (personal data, kinds ``pii_kinds``), ``regex``
            (``patterns``), ``blocklist`` (``blocklist`` words, case-insensitive, whole words).
        pii_kinds: kinds of personal data (``null`` = all of ``email``, ``phone``, ``ssn``, ``credit_card``,
            ``street_address``, ``korean_rrn``).
        patterns: ``name -> regex`` for the ``regex`` rule (reason ``regex:<name>``).
        blocklist: words or phrases for the ``blocklist`` rule.
        fields: record fields the rules read (``prompt``, ``response``, ``chosen``, ``rejected``, ``messages``,
            ``instruction``, ``input``; ``null`` = every text field).
        reward_model: a reward model folder; records whose reply (``response``, ``chosen``, or the last assistant
            turn) scores below ``reward_threshold`` are removed (reason ``reward_model``).
        reward_threshold: the reward below which a reply is removed.
        judge_model: a causal LM asked whether the reply is harmful; removed when P(yes) >= ``judge_threshold``
            (reason ``judge``).
        judge_threshold: the harm probability at which a reply is removed.
        dry_run: only count and report; keep every record.
        max_logged: removed records kept as the MLflow sample.
        batch_size: replies per classifier batch.
    """

    rules: list[str] = field(default_factory=lambda: ["pii"])
    pii_kinds: Optional[list[str]] = None
    patterns: dict[str, str] = field(default_factory=dict)
    blocklist: list[str] = field(default_factory=list)
    fields: Optional[list[str]] = None
    reward_model: Optional[str] = None
    reward_threshold: float = 0.0
    judge_model: Optional[str] = None
    judge_threshold: float = 0.5
    dry_run: bool = False
    max_logged: int = 20
    batch_size: int = 8

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in SAFETY_RULES]
        if unknown:
            raise UserError(f"safety_filter.rules: unknown {unknown}; choose from {sorted(SAFETY_RULES)}")
        kinds = [k for k in (self.pii_kinds or []) if k not in PII_PATTERNS]
        if kinds:
            raise UserError(f"safety_filter.pii_kinds: unknown {kinds}; choose from {sorted(PII_PATTERNS)}")
        for name, pattern in self.patterns.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise UserError(f"safety_filter.patterns.{name}: not a regular expression ({e})") from None
        if "regex" in self.rules and not self.patterns:
            raise UserError("safety_filter: rule 'regex' needs patterns: {name: regex}")
        if "blocklist" in self.rules and not self.blocklist:
            raise UserError("safety_filter: rule 'blocklist' needs blocklist: [words]")


# ---- what a record says -----------------------------------------------------------------------------------------------
def record_texts(record: dict) -> dict[str, str]:
    """Text of each field of a normalised record (message lists joined by newlines; ``raw_*`` copies left out).

    >>> record_texts({"prompt": [{"role": "user", "content": "Hi"}], "raw_prompt": "Hi", "chosen": "Hello", "margin": 1})
    {'prompt': 'Hi', 'chosen': 'Hello'}
    """
    out = {}
    for key, value in record.items():
        if key.startswith("raw_"):
            continue
        if isinstance(value, str) and value:
            out[key] = value
        elif isinstance(value, list):
            texts = [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
            if texts:
                out[key] = "\n".join(texts)
    return out


def prompt_and_reply(record: dict) -> tuple[Optional[list[dict]], Optional[str]]:
    """``(prompt messages, reply)`` a classifier judges: the reply is ``response``, ``chosen`` or the last assistant
    turn; ``(prompt, None)`` for a bare prompt.

    >>> prompt_and_reply({"instruction": "Add", "input": "2 + 2", "response": "4"})
    ([{'role': 'user', 'content': 'Add\\n\\n2 + 2'}], '4')
    """
    if "messages" in record:
        msgs = record["messages"]
        if msgs and msgs[-1]["role"] == "assistant":
            return msgs[:-1], msgs[-1]["content"]
        return msgs, None
    if "instruction" in record:
        text = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return [{"role": "user", "content": text}], record.get("response")
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return prompt, record.get("response", record.get("chosen"))


# ---- rules: record -> [{"reason", "field", "match"}] --------------------------------------------------------------------
Rule = Callable[[dict[str, str], SafetyFilter], list[dict]]


def _pii_rule(texts: dict[str, str], cfg: SafetyFilter) -> list[dict]:
    """Personal data as :func:`~lightning_post.scoring.detectors.find_pii` validates it (a card number's Luhn digit,
    a parseable phone number, ...): a pattern that merely looks like one (an invoice number) drops no record."""
    kinds = cfg.pii_kinds or list(PII_PATTERNS)
    return [{"reason": f"pii:{kind}", "field": name, "match": hits[0]}
            for name, text in texts.items() for kind, hits in find_pii(text).items() if kind in kinds]


def _regex_rule(texts: dict[str, str], cfg: SafetyFilter) -> list[dict]:
    return [{"reason": f"regex:{rname}", "field": name, "match": m.group(0)}
            for name, text in texts.items() for rname, pattern in cfg.patterns.items()
            for m in [re.search(pattern, text)] if m]


def _blocklist_rule(texts: dict[str, str], cfg: SafetyFilter) -> list[dict]:
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in cfg.blocklist) + r")\b", re.IGNORECASE)
    return [{"reason": "blocklist", "field": name, "match": m.group(0)}
            for name, text in texts.items() for m in [pattern.search(text)] if m]


#: rule name -> function (texts by field, settings) -> findings
SAFETY_RULES: dict[str, Rule] = {"pii": _pii_rule, "regex": _regex_rule, "blocklist": _blocklist_rule}


@dataclass
class FilterResult:
    """What the filter did to one split: the records kept, and the removed ones with their findings."""

    kept: list[dict]
    removed: list[dict]  # {"index", "where", "reasons", "findings", "record"}
    counts: dict[str, int]  # reason -> records removed for it (a record with two reasons counts in both)
    total: int


def rule_findings(record: dict, cfg: SafetyFilter) -> list[dict]:
    texts = record_texts(record)
    if cfg.fields is not None:
        texts = {k: v for k, v in texts.items() if k in cfg.fields}
    return [f for name in cfg.rules for f in SAFETY_RULES[name](texts, cfg)]


def apply_safety_filter(records: list[dict], cfg: SafetyFilter, classify: Optional[Callable] = None) -> FilterResult:
    """Split ``records`` (dicts, or ``(file:line, dict)`` pairs) into kept and removed: the rules first, then ``classify`` (the model classifiers, see
    :func:`model_classifier`) on what the rules kept. Under ``dry_run`` every record is kept and the removals are
    only reported."""
    located = [r if isinstance(r, tuple) else (None, r) for r in records]  # (file:line, record) or a bare record
    findings = [rule_findings(r, cfg) for _, r in located]
    if classify is not None:
        todo = [i for i, f in enumerate(findings) if not f]
        for i, extra in zip(todo, classify([located[i][1] for i in todo])):
            findings[i] += extra
    removed, counts = [], {}
    for i, ((where, record), found) in enumerate(zip(located, findings)):
        if found:
            reasons = sorted({f["reason"] for f in found})
            for reason in reasons:
                counts[reason] = counts.get(reason, 0) + 1
            removed.append({"index": i, "where": where, "reasons": reasons, "findings": found, "record": record})
    gone = {r["index"] for r in removed}
    kept = list(records) if cfg.dry_run else [r for i, r in enumerate(records) if i not in gone]
    return FilterResult(kept, removed, counts, len(records))


def model_classifier(cfg: SafetyFilter) -> Optional[Callable[[list[dict]], list[list[dict]]]]:
    """The model half of the filter (reward-model threshold, LLM harm judge) as ``records -> findings per record``;
    ``None`` when neither is set. Records without a reply (bare prompts) are not judged."""
    if not cfg.reward_model and not cfg.judge_model:
        return None
    scorer = RewardModelScorer(cfg.reward_model, batch_size=cfg.batch_size) if cfg.reward_model else None
    judge = LLMJudge(cfg.judge_model, batch_size=cfg.batch_size) if cfg.judge_model else None

    def classify(records: list[dict]) -> list[list[dict]]:
        out: list[list[dict]] = [[] for _ in records]
        pairs = [(i, *prompt_and_reply(r)) for i, r in enumerate(records)]
        pairs = [(i, p, a) for i, p, a in pairs if p and a]
        if not pairs:
            return out
        idx, prompts, replies = zip(*pairs)
        if scorer is not None:
            recs = [{"prompt": p, "raw_prompt": p[-1]["content"]} for p in prompts]
            for i, s in zip(idx, scorer.score(recs, list(replies), torch.device("cpu"), progress=True).tolist()):
                if s < cfg.reward_threshold:
                    out[i].append({"reason": "reward_model", "field": "reply", "match": f"reward {s:.3f}"})
        if judge is not None:
            for i, p in zip(idx, judge.harmful_probs(list(prompts), list(replies))):
                if p >= cfg.judge_threshold:
                    out[i].append({"reason": "judge", "field": "reply", "match": f"P(harmful) {p:.3f}"})
        return out

    return classify


def filter_splits(splits: dict[str, Any], cfg: Optional[SafetyFilter]) -> tuple[dict[str, Any], dict]:
    """Apply the filter to every split that is a list of records; returns the new splits and the report
    ``{"dry_run", "splits": {split: {"total", "removed", "by_reason"}}, "sample": [...]}``."""
    if cfg is None:
        return splits, {}
    classify = model_classifier(cfg)
    report: dict[str, Any] = {"dry_run": cfg.dry_run, "splits": {}, "sample": []}
    out = dict(splits)
    for split, records in splits.items():
        if not isinstance(records, list):
            continue
        result = apply_safety_filter(records, cfg, classify)
        out[split] = result.kept
        report["splits"][split] = {"total": result.total, "removed": len(result.removed),
                                   "by_reason": result.counts}
        room = cfg.max_logged - len(report["sample"])
        report["sample"] += [{"split": split, **r} for r in result.removed[:max(room, 0)]]
        verb = "would remove" if cfg.dry_run else "removed"
        log.info("safety filter: %s %d of %d %s records %s", verb, len(result.removed), result.total, split,
                 result.counts or "")
    return out, report


def safety_metrics(report: dict) -> dict[str, float]:
    """MLflow metrics of a filter report: ``safety_filter/<split>_total``, ``..._removed`` and
    ``..._removed/<reason>``."""
    out = {}
    for split, s in report.get("splits", {}).items():
        out[f"safety_filter/{split}_total"] = float(s["total"])
        out[f"safety_filter/{split}_removed"] = float(s["removed"])
        for reason, n in s["by_reason"].items():
            out[f"safety_filter/{split}_removed/{reason.replace(':', '_')}"] = float(n)
    return out
