"""Deployment feedback: validate feedback events and turn them into training data and a summary report.

One JSON object per line (JSON Lines); fields:

========================  ========  =====================================================================
field                     required  meaning
========================  ========  =====================================================================
``prompt``                yes       the user's request (string), or the conversation so far as chat messages
                                    ``[{"role": "user", "content": ...}, ...]`` ending with a user turn
``response``              *         the model's answer that was rated (string); required unless the event
                                    is only a ``comparison``
``thumbs``                no        ``"up"`` or ``"down"``
``ratings``               no        ``{criterion: integer 1-5}``, e.g. ``{"helpfulness": 4, "honesty": 5}``
``comment``               no        free text
``comparison``            no        ``{"response_a": str, "response_b": str, "preferred": "a" | "b" | "tie"}``
``user_id``/``session_id`` no       who gave the feedback (strings)
``timestamp``             no        ISO 8601 time, e.g. ``2026-11-27T10:15:00Z``
========================  ========  =====================================================================

An event carries at least one signal: ``thumbs``, ``ratings`` or ``comparison``. Errors name the file, line and
field: ``feedback.jsonl:12: field 'ratings.honesty': must be an integer from 1 to 5, got 7``.

Conversions (pure functions, list of events in, records out):

* :func:`to_unpaired`: ``{"prompt", "completion", "label"}`` for KTO: thumbs up/down; else a mean rating of at
  least ``good_rating`` (desirable) or at most ``bad_rating`` (undesirable); both answers of a decided comparison;
* :func:`to_pairs`: ``{"prompt", "chosen", "rejected"}`` from comparisons (ties are left out);
* :func:`to_sft`: ``{"instruction", "response"}`` from answers with thumbs up (unless rated below ``min_rating``)
  or a mean rating of at least ``min_rating``.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any, Optional

from lightning_post.records.chat import chat_messages, hh_text
from lightning_post.records.files import DataError, raw_records
from lightning_post.records.registry import normalizer

THUMBS = ("up", "down")
PREFERRED = ("a", "b", "tie")
KNOWN = {"prompt", "response", "thumbs", "ratings", "comment", "comparison", "user_id", "session_id", "timestamp"}


def _string(record: dict, field: str, where: str, required: bool) -> Optional[str]:
    value = record.get(field)
    if value is None:
        if required:
            raise DataError(where, field, "is missing")
        return None
    if not isinstance(value, str):
        raise DataError(where, field, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(where, field, "is empty")
    return value


@normalizer("feedback")
def normalize_feedback_event(record: Any, where: str) -> dict[str, Any]:
    """Validate one feedback event and return it with every known field present (``None`` when absent).

    >>> normalize_feedback_event({"prompt": "Hi", "response": "Hello", "thumbs": "up"}, "f:1")["thumbs"]
    'up'
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"an event must be a JSON object, got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}
    unknown = sorted(set(record) - KNOWN)
    if unknown:
        raise DataError(where, unknown[0], f"is not a feedback field (known: {sorted(KNOWN)})")
    event: dict[str, Any] = {k: None for k in KNOWN}
    if isinstance(record.get("prompt"), list):
        event["prompt"] = chat_messages(record["prompt"], where, "prompt")
        if event["prompt"][-1]["role"] != "user":
            raise DataError(where, f"prompt[{len(event['prompt']) - 1}].role", "the conversation must end with a user turn")
    else:
        event["prompt"] = _string(record, "prompt", where, required=True)
    thumbs = record.get("thumbs")
    if thumbs is not None and thumbs not in THUMBS:
        raise DataError(where, "thumbs", f"must be 'up' or 'down', got {thumbs!r}")
    event["thumbs"] = thumbs
    ratings = record.get("ratings")
    if isinstance(ratings, dict):  # datasets gives every row every criterion seen in the file, absent ones as None
        ratings = {k: v for k, v in ratings.items() if v is not None} or None
    if ratings is not None:
        if not isinstance(ratings, dict) or not ratings:
            raise DataError(where, "ratings", "must be a non-empty object {criterion: 1-5}")
        for name, value in ratings.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise DataError(where, f"ratings.{name}", f"must be an integer from 1 to 5, got {value!r}")
        event["ratings"] = dict(ratings)
    comparison = record.get("comparison")
    if comparison is not None:
        if not isinstance(comparison, dict):
            raise DataError(where, "comparison", "must be an object {response_a, response_b, preferred}")
        for side in ("response_a", "response_b"):
            value = comparison.get(side)
            if not isinstance(value, str) or not value.strip():
                raise DataError(where, f"comparison.{side}", "must be a non-empty string")
        if comparison.get("preferred") not in PREFERRED:
            raise DataError(where, "comparison.preferred", f"must be 'a', 'b' or 'tie', got {comparison.get('preferred')!r}")
        event["comparison"] = {k: comparison[k] for k in ("response_a", "response_b", "preferred")}
    needs_response = thumbs is not None or ratings is not None
    event["response"] = _string(record, "response", where, required=needs_response)
    if thumbs is None and ratings is None and comparison is None:
        raise DataError(where, None, "the event has no feedback: give thumbs, ratings or comparison")
    event["comment"] = _string(record, "comment", where, required=False)
    for field in ("user_id", "session_id"):
        event[field] = _string(record, field, where, required=False)
    if isinstance(record.get("timestamp"), datetime):  # datasets parses ISO times while loading
        record["timestamp"] = record["timestamp"].isoformat()
    stamp = _string(record, "timestamp", where, required=False)
    if stamp is not None:
        try:
            datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise DataError(where, "timestamp", f"must be an ISO 8601 time, got {stamp!r}") from None
    event["timestamp"] = stamp
    return event


def load_feedback(paths: list[str]) -> list[dict[str, Any]]:
    """Every event of ``paths``, validated; the first bad event raises :class:`DataError`."""
    return [event for path in paths for _, event in raw_records(path, normalize_feedback_event)]


def mean_rating(event: dict) -> Optional[float]:
    ratings = event.get("ratings")
    return sum(ratings.values()) / len(ratings) if ratings else None


# ---- conversions ---------------------------------------------------------------------------------------------------
def to_unpaired(events: list[dict], good_rating: float = 4.0, bad_rating: float = 2.0) -> list[dict]:
    """KTO data ``{"prompt", "completion", "label"}``; thumbs decide, else the mean rating; comparisons give both.

    >>> to_unpaired([{"prompt": "p", "response": "r", "thumbs": "down", "ratings": None, "comparison": None}])
    [{'prompt': 'p', 'completion': 'r', 'label': False}]
    """
    out = []
    for e in events:
        label = None
        if e.get("thumbs") is not None:
            label = e["thumbs"] == "up"
        elif e.get("ratings"):
            m = mean_rating(e)
            label = True if m >= good_rating else False if m <= bad_rating else None
        if label is not None and e.get("response") is not None:
            out.append({"prompt": e["prompt"], "completion": e["response"], "label": label})
        c = e.get("comparison")
        if c and c["preferred"] != "tie":
            win, lose = (c["response_a"], c["response_b"]) if c["preferred"] == "a" else (c["response_b"], c["response_a"])
            out += [{"prompt": e["prompt"], "completion": win, "label": True},
                    {"prompt": e["prompt"], "completion": lose, "label": False}]
    return out


def to_pairs(events: list[dict]) -> list[dict]:
    """Preference pairs from comparisons of two answers to the same prompt (ties left out)."""
    out = []
    for e in events:
        c = e.get("comparison")
        if c and c["preferred"] != "tie":
            win, lose = (c["response_a"], c["response_b"]) if c["preferred"] == "a" else (c["response_b"], c["response_a"])
            out.append({"prompt": e["prompt"], "chosen": win, "rejected": lose})
    return out


def to_sft(events: list[dict], min_rating: float = 4.5) -> list[dict]:
    """SFT data from well-received answers: thumbs up (unless rated below ``min_rating``), or no thumbs and a mean
    rating of at least ``min_rating``."""
    out = []
    for e in events:
        if e.get("response") is None:
            continue
        m = mean_rating(e)
        good = (e.get("thumbs") == "up" and (m is None or m >= min_rating)) or (e.get("thumbs") is None and m is not None
                                                                               and m >= min_rating)
        if good:
            # a conversation becomes one instruction in HH-RLHF's layout (instruction data has no message lists)
            prompt = e["prompt"] if isinstance(e["prompt"], str) else hh_text(e["prompt"]).strip()
            out.append({"instruction": prompt, "response": e["response"]})
    return out


# ---- report --------------------------------------------------------------------------------------------------------
def feedback_report(events: list[dict]) -> dict[str, Any]:
    """Counts, rating distribution per criterion, and agreement between thumbs and ratings.

    Agreement is over events with both thumbs and ratings whose mean rating is not exactly 3: the share where
    thumbs up goes with a mean rating above 3 and thumbs down with one below 3. ``rating_mean_up``/``_down`` are the
    mean ratings of thumbs-up and thumbs-down events.
    """
    thumbs = Counter(e["thumbs"] for e in events if e.get("thumbs"))
    comparisons = Counter(e["comparison"]["preferred"] for e in events if e.get("comparison"))
    distribution: dict[str, dict[int, int]] = {}
    for e in events:
        for name, value in (e.get("ratings") or {}).items():
            distribution.setdefault(name, {k: 0 for k in range(1, 6)})[value] += 1
    both = [(e["thumbs"], mean_rating(e)) for e in events if e.get("thumbs") and e.get("ratings")]
    decided = [(t, m) for t, m in both if m != 3]
    agree = sum((t == "up") == (m > 3) for t, m in decided)
    means = {t: [m for tt, m in both if tt == t] for t in THUMBS}
    report: dict[str, Any] = {
        "events": len(events),
        "thumbs_up": thumbs.get("up", 0),
        "thumbs_down": thumbs.get("down", 0),
        "rated": sum(1 for e in events if e.get("ratings")),
        "comparisons": sum(comparisons.values()),
        "comparison_ties": comparisons.get("tie", 0),
        "comments": sum(1 for e in events if e.get("comment")),
        "users": len({e["user_id"] for e in events if e.get("user_id")}),
        "sessions": len({e["session_id"] for e in events if e.get("session_id")}),
        "rating_distribution": distribution,
        "rating_mean": {name: sum(k * n for k, n in d.items()) / max(1, sum(d.values())) for name, d in distribution.items()},
        "thumbs_rating_pairs": len(both),
        "thumbs_rating_agreement": agree / len(decided) if decided else math.nan,
        "rating_mean_up": sum(means["up"]) / len(means["up"]) if means["up"] else math.nan,
        "rating_mean_down": sum(means["down"]) / len(means["down"]) if means["down"] else math.nan,
    }
    return report
