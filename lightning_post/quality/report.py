"""The data-quality report of a set of annotations: agreement, bias, consistency, diversity and balance, as one JSON
tree (:func:`quality_report`), the checks a gate applies to it (:func:`gate_findings`), and a readable HTML page
with plots (:func:`render_page`)."""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any, Iterable, Optional, Sequence

from lightning_post.quality.gate import QualityGate
from lightning_post.records.annotations import CRITERIA, VERDICTS
from lightning_post.quality.stats import (
    cohen_kappa, distinct_n, fleiss_kappa, intransitive_triples, label_distribution, length_bias, percent_agreement,
    position_bias, win_rates,
)


def text_length(text: str, unit: str = "words") -> int:
    """Length of an answer in ``words`` (whitespace-separated) or ``chars``."""
    if unit == "words":
        return len(text.split())
    if unit == "chars":
        return len(text)
    raise ValueError(f"length unit must be 'words' or 'chars', got {unit!r}")


def _identity(ann: dict, side: str) -> str:
    """What an answer is, across annotations: its model when known, else its text."""
    return ann.get(f"model_{side}") or "text:" + ann[f"response_{side}"]


def _prompt_key(ann: dict) -> str:
    """The prompt as asked (its messages), so the same question under two ids is one prompt for the checks."""
    return json.dumps(ann["prompt"], ensure_ascii=False, sort_keys=True)


def _item(ann: dict) -> tuple[str, tuple[str, str]]:
    """The comparison, whatever order it was shown in: (prompt, the two answers sorted)."""
    return _prompt_key(ann), tuple(sorted((_identity(ann, "a"), _identity(ann, "b"))))


def _canonical(ann: dict, v: Optional[str]) -> Optional[str]:
    """A verdict relative to the sorted answers: ``first``/``second``/``Tie`` (so swapped presentations agree)."""
    if v is None or v == "Tie":
        return v
    winner = _identity(ann, "a" if v == "A" else "b")
    return "first" if winner == _item(ann)[1][0] else "second"


def _verdict_of(ann: dict, criterion: str) -> Optional[str]:
    return ann["overall"] if criterion == "overall" else (ann.get("criteria") or {}).get(criterion)


def agreement(annotations: Sequence[dict], criterion: str) -> dict:
    """Agreement on one criterion between annotators who labelled the same comparisons: Cohen's kappa for two,
    Fleiss' kappa (and the mean pairwise Cohen's kappa) for more, and percent agreement (share of agreeing rater
    pairs). An annotator's first label of a comparison counts; repeats are the consistency check's business."""
    labels: dict[tuple, dict[str, str]] = defaultdict(dict)
    for ann in annotations:
        v = _canonical(ann, _verdict_of(ann, criterion))
        if v is not None:
            labels[_item(ann)].setdefault(ann["annotator"], v)
    annotators = sorted({a for by in labels.values() for a in by})
    shared = {k: by for k, by in labels.items() if len(by) >= 2}
    out: dict[str, Any] = {"annotators": annotators, "items_with_two_or_more": len(shared)}
    if len(annotators) < 2 or not shared:
        out["note"] = "needs at least two annotators labelling the same comparisons"
        return out
    cats = ["first", "second", "Tie"]
    table = [[Counter(by.values())[c] for c in cats] for by in shared.values()]
    out["percent_agreement"] = percent_agreement(table)
    pairwise = {}
    for x, y in combinations(annotators, 2):
        both = [(by[x], by[y]) for by in shared.values() if x in by and y in by]
        if both:
            pairwise[f"{x} vs {y}"] = {"items": len(both), "kappa": cohen_kappa([p[0] for p in both],
                                                                                  [p[1] for p in both]),
                                       "agreement": sum(p == q for p, q in both) / len(both)}
    out["cohen"] = pairwise
    if len(annotators) == 2:
        out["kappa"], out["kappa_kind"] = next(iter(pairwise.values()))["kappa"], "cohen"
    else:
        out["kappa"], out["kappa_kind"] = fleiss_kappa(table), "fleiss"
        out["mean_pairwise_cohen"] = sum(p["kappa"] for p in pairwise.values()) / len(pairwise)
    return out


def consistency(annotations: Sequence[dict]) -> dict:
    """Comparisons one annotator labelled more than once, and those labelled both ways (the winner differs)."""
    seen: dict[tuple, list[str]] = defaultdict(list)
    for ann in annotations:
        seen[(ann["annotator"], _item(ann))].append(_canonical(ann, ann["overall"]))
    repeated = {k: v for k, v in seen.items() if len(v) > 1}
    both_ways = [k for k, v in repeated.items() if "first" in v and "second" in v]
    return {"repeated": len(repeated), "both_ways": len(both_ways),
            "both_ways_rate": len(both_ways) / len(repeated) if repeated else 0.0,
            "examples": [{"annotator": a, "prompt": json.loads(item[0])[-1]["content"][:200], "answers": list(item[1])}
                         for a, item in both_ways[:5]]}


def intransitivity(annotations: Sequence[dict]) -> dict:
    """Cycles A > B > C > A among one annotator's decisive verdicts on one prompt."""
    prefs: dict[tuple, list] = defaultdict(list)
    for ann in annotations:
        if ann["overall"] in ("A", "B"):
            win, lose = ("a", "b") if ann["overall"] == "A" else ("b", "a")
            prefs[(ann["annotator"], _prompt_key(ann))].append((_identity(ann, win), _identity(ann, lose)))
    cycles = [(a, key, c) for (a, key), p in prefs.items() for c in intransitive_triples(p)]
    triples = 0
    for p in prefs.values():  # prompts with 3+ answers compared: how many triples could have cycled
        n = len({x for pair in p for x in pair})
        triples += math.comb(n, 3) if n >= 3 else 0
    return {"intransitive_triples": len(cycles), "triples_checked": triples,
            "rate": len(cycles) / triples if triples else 0.0,
            "examples": [{"annotator": a, "prompt": json.loads(key)[-1]["content"][:200], "cycle": list(c)}
                         for a, key, c in cycles[:5]]}


def completeness(annotations: Sequence[dict]) -> dict:
    """How many annotations lack each optional field (``model_a``/``model_b``, each criterion, reasoning,
    confidence); the required fields are enforced on load."""
    n = len(annotations)
    missing = {
        "model": sum(not (a.get("model_a") and a.get("model_b")) for a in annotations),
        **{f"criteria.{c}": sum(c not in (a.get("criteria") or {}) for a in annotations) for c in CRITERIA},
        "reasoning": sum(not a.get("reasoning") for a in annotations),
        "confidence": sum(a.get("confidence") is None for a in annotations),
    }
    return {"annotations": n, "missing": missing, "complete_rate": sum(
        all([a.get("model_a"), a.get("model_b"), len(a.get("criteria") or {}) == len(CRITERIA), a.get("reasoning"),
             a.get("confidence") is not None]) for a in annotations) / n if n else 0.0}


def diversity(annotations: Sequence[dict]) -> dict:
    """Distinct-1/2 of the answers, and duplicate prompts: texts that occur under more than one prompt id (the
    same question asked as different prompts)."""
    answers = {}
    for ann in annotations:
        for side in "ab":
            answers[(ann["prompt_id"], _identity(ann, side))] = ann[f"response_{side}"]
    ids_by_text: dict[str, set] = defaultdict(set)
    for ann in annotations:
        text = " ".join(m["content"] for m in ann["prompt"]).lower().split()  # case and spacing aside
        ids_by_text[" ".join(text)].add(ann["prompt_id"])
    prompts = len({a["prompt_id"] for a in annotations})
    dup = {t: ids for t, ids in ids_by_text.items() if len(ids) > 1}
    return {"answers": len(answers), "distinct_1": distinct_n(answers.values(), 1),
            "distinct_2": distinct_n(answers.values(), 2), "prompts": prompts,
            "duplicate_prompt_texts": len(dup),
            "duplicate_prompt_rate": sum(len(ids) - 1 for ids in dup.values()) / prompts if prompts else 0.0,
            "duplicate_examples": [t[:120] for t in list(dup)[:5]]}


def balance(annotations: Sequence[dict]) -> dict:
    """Label distribution overall and per annotator, how often each model is compared and shown as A."""
    models = Counter(m for a in annotations for m in (a.get("model_a"), a.get("model_b")) if m)
    shown_a = Counter(a["model_a"] for a in annotations if a.get("model_a"))
    return {
        "labels": label_distribution([a["overall"] for a in annotations], VERDICTS),
        "by_annotator": {who: label_distribution([a["overall"] for a in annotations if a["annotator"] == who],
                                                 VERDICTS)
                         for who in sorted({a["annotator"] for a in annotations})},
        "annotations_per_annotator": dict(Counter(a["annotator"] for a in annotations)),
        "model_comparisons": dict(models),
        "model_shown_as_a_rate": {m: shown_a[m] / models[m] for m in sorted(models)},
    }


def bias(annotations: Sequence[dict], length_unit: str = "words", confidence: float = 0.95) -> dict:
    """Position, length and model bias, overall and per annotator."""
    def one(anns):
        v = [a["overall"] for a in anns]
        out = {"position": position_bias(v, confidence),
               "length": length_bias(v, [text_length(a["response_a"], length_unit) for a in anns],
                                     [text_length(a["response_b"], length_unit) for a in anns], confidence)}
        with_models = [(a["model_a"], a["model_b"], a["overall"]) for a in anns if a.get("model_a") and a.get("model_b")]
        if with_models:
            out["model_win_rates"] = win_rates(with_models, confidence)
        return out

    out = one(annotations)
    who = sorted({a["annotator"] for a in annotations})
    if len(who) > 1:
        out["by_annotator"] = {w: one([a for a in annotations if a["annotator"] == w]) for w in who}
    return out


def quality_report(annotations: Sequence[dict], length_unit: str = "words", confidence: float = 0.95) -> dict:
    """Every check of a set of validated annotations, as one JSON-ready tree."""
    if not annotations:
        raise ValueError("the quality report needs at least one annotation")
    return {
        "annotations": len(annotations),
        "annotators": sorted({a["annotator"] for a in annotations}),
        "length_unit": length_unit,
        "agreement": {c: agreement(annotations, c) for c in ("overall", *CRITERIA)},
        "bias": bias(annotations, length_unit, confidence),
        "consistency": consistency(annotations),
        "intransitivity": intransitivity(annotations),
        "completeness": completeness(annotations),
        "diversity": diversity(annotations),
        "balance": balance(annotations),
    }


def key_names(names: Iterable[str], limit: int = 60) -> dict[str, str]:
    """name -> the part of an MLflow key that stands for a model or an annotator: a path (what ``data pairs
    --models <export folder>`` records) becomes its last informative component, characters MLflow refuses in a key
    (and ``:``) become ``_``, and names that end up alike are numbered in sorted order.

    >>> key_names(["/x/exports/dpo/model", "/y/dpo/model", "m1", "llm:judge"])
    {'/x/exports/dpo/model': 'dpo', '/y/dpo/model': 'dpo-2', 'llm:judge': 'llm_judge', 'm1': 'm1'}
    """
    from lightning_post.tracking import model_label

    out: dict[str, str] = {}
    for name in sorted(set(names)):
        text = model_label(name) if re.search(r"[\\/]", name) else name
        base = re.sub(r"[^\w.\- ]+", "_", text).strip(" ._")[:limit] or "unnamed"
        label, n = base, 1
        while label in out.values():
            n += 1
            label = f"{base}-{n}"
        out[name] = label
    return out


def gate_findings(report: dict, gate: QualityGate, position_known: bool = True) -> list[str]:
    """The limits of ``gate`` that ``report`` breaks, each as one readable sentence (empty when it passes)."""
    out = []
    b = report["bias"]

    def biased(test: dict, limit: Optional[float]) -> bool:
        return limit is not None and test["n"] > 0 and abs(test["rate"] - 0.5) > limit and test["p_value"] < gate.alpha

    if position_known and biased(b["position"], gate.max_position_bias):
        out.append(f"position bias: answer A chosen {b['position']['rate']:.1%} of {b['position']['n']} decisive "
                   f"labels (p = {b['position']['p_value']:.2g}; limit 50% +- {gate.max_position_bias:.0%})")
    if biased(b["length"], gate.max_length_bias):
        out.append(f"length bias: the longer answer chosen {b['length']['rate']:.1%} of {b['length']['n']} times "
                   f"(p = {b['length']['p_value']:.2g}; limit 50% +- {gate.max_length_bias:.0%})")
    c = report["consistency"]
    if gate.max_both_ways_rate is not None and c["repeated"] and c["both_ways_rate"] > gate.max_both_ways_rate:
        out.append(f"inconsistent labels: {c['both_ways']} of {c['repeated']} repeated comparisons labelled both ways")
    t = report["intransitivity"]
    if gate.max_intransitive_rate is not None and t["triples_checked"] and t["rate"] > gate.max_intransitive_rate:
        out.append(f"intransitive preferences: {t['intransitive_triples']} of {t['triples_checked']} triples cycle")
    d = report["diversity"]
    if gate.max_duplicate_prompt_rate is not None and d["duplicate_prompt_rate"] > gate.max_duplicate_prompt_rate:
        out.append(f"duplicate prompts: {d['duplicate_prompt_rate']:.1%} of prompts repeat another's text")
    k = report["agreement"]["overall"].get("kappa")
    if gate.min_kappa is not None and k is not None and k < gate.min_kappa:
        out.append(f"low agreement: overall kappa {k:.2f} < {gate.min_kappa}")
    return out


# ---- the readable page ----------------------------------------------------------------------------------------------
def plots(report: dict) -> dict[str, Any]:
    """Matplotlib figures: label shares per annotator, model win rates with intervals, position and length bias
    per annotator, and kappa per criterion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    bal = report["balance"]["by_annotator"]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(bal) + 2), 3.2))
    bottom = [0.0] * len(bal)
    for v, colour in zip(VERDICTS, ("#4C72B0", "#DD8452", "#999999")):
        shares = [bal[w][v]["share"] for w in bal]
        ax.bar(list(bal), shares, bottom=bottom, label=v, color=colour)
        bottom = [b + s for b, s in zip(bottom, shares)]
    ax.set_title("labels per annotator")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    figs["labels"] = fig

    per = report["bias"].get("by_annotator") or {report["annotators"][0]: report["bias"]}
    with_models = {w: b["model_win_rates"] for w, b in per.items() if "model_win_rates" in b}
    if with_models:
        models = sorted({m for r in with_models.values() for m in r})
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(models) + 2), 3.4))
        width = 0.8 / len(with_models)
        for j, (w, rates) in enumerate(with_models.items()):
            xs = [i + j * width for i in range(len(models))]
            ys = [rates[m]["win_rate"] if m in rates else 0 for m in models]
            err = [[y - rates[m]["ci"][0] if m in rates else 0 for m, y in zip(models, ys)],
                   [rates[m]["ci"][1] - y if m in rates else 0 for m, y in zip(models, ys)]]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=w)
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        ax.set_xticks([i + width * (len(with_models) - 1) / 2 for i in range(len(models))], models, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate (ties half), 95% CI")
        ax.set_title("model win rates")
        ax.legend(fontsize=8)
        fig.tight_layout()
        figs["model_win_rates"] = fig

    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(per) + 2), 3.2))
    for j, (name, colour) in enumerate((("position", "#4C72B0"), ("length", "#DD8452"))):
        xs = [i + j * 0.4 for i in range(len(per))]
        ys = [per[w][name]["rate"] if per[w][name]["n"] else 0 for w in per]
        err = [[y - per[w][name]["ci"][0] for w, y in zip(per, ys)], [per[w][name]["ci"][1] - y for w, y in zip(per, ys)]]
        ax.bar(xs, ys, 0.4, yerr=err, capsize=3, color=colour,
               label="chose A (position)" if name == "position" else "chose the longer answer")
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks([i + 0.2 for i in range(len(per))], list(per), rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate, 95% CI")
    ax.set_title("position and length bias")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["bias"] = fig

    kappas = {c: a["kappa"] for c, a in report["agreement"].items() if "kappa" in a}
    if kappas:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.bar(list(kappas), list(kappas.values()), color="#55A868")
        ax.set_ylim(min(0, *kappas.values()) - 0.05, 1)
        ax.set_ylabel("kappa")
        ax.set_title("agreement per criterion")
        fig.tight_layout()
        figs["agreement"] = fig
    for f in figs.values():
        plt.close(f)
    return figs


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3g}" if abs(v) < 1e-3 and v else f"{v:.3f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return html.escape(str(v))


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_page(report: dict, findings: Sequence[str], plot_files: Sequence[str], title: str) -> str:
    """A self-contained HTML page of the report (plots referenced as ``plots/<name>.png`` beside it)."""
    b = report["bias"]
    per = b.get("by_annotator") or {report["annotators"][0]: b}
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{report['annotations']} annotations by {len(report['annotators'])} annotator(s): "
             f"{html.escape(', '.join(report['annotators']))}.</p>"]
    parts.append("<h2>Gate</h2>" + ("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in findings) + "</ul>"
                                    if findings else "<p>No limit broken.</p>"))
    rows = []
    for w, x in per.items():
        for name in ("position", "length"):
            rows.append({"annotator": w, "test": {"position": "chose A", "length": "chose longer"}[name], **x[name]})
    parts.append("<h2>Bias</h2>" + _table(rows, ["annotator", "test", "n", "k", "rate", "ci", "p_value", "effect_h"]))
    for w, x in per.items():
        if "model_win_rates" in x:
            parts.append(f"<h3>Model win rates ({html.escape(w)})</h3>" + _table(
                [{"model": m, **r} for m, r in sorted(x["model_win_rates"].items(), key=lambda kv: -kv[1]["win_rate"])],
                ["model", "n", "wins", "ties", "losses", "win_rate", "ci"]))
    parts.append("<h2>Agreement</h2>" + _table(
        [{"criterion": c, **a} for c, a in report["agreement"].items()],
        ["criterion", "items_with_two_or_more", "kappa_kind", "kappa", "percent_agreement", "note"]))
    c, t, d = report["consistency"], report["intransitivity"], report["diversity"]
    parts.append("<h2>Validation</h2>" + _table([
        {"check": "labelled both ways", "value": c["both_ways"], "of": c["repeated"], "rate": c["both_ways_rate"]},
        {"check": "intransitive triples", "value": t["intransitive_triples"], "of": t["triples_checked"],
         "rate": t["rate"]},
        {"check": "duplicate prompt texts", "value": d["duplicate_prompt_texts"], "of": d["prompts"],
         "rate": d["duplicate_prompt_rate"]},
        {"check": "distinct-1 / distinct-2 of answers", "value": f"{d['distinct_1']:.3f} / {d['distinct_2']:.3f}",
         "of": d["answers"], "rate": ""},
        {"check": "complete annotations", "value": "", "of": report["completeness"]["annotations"],
         "rate": report["completeness"]["complete_rate"]},
        {"check": "malformed records left out", "value": report["completeness"].get("invalid_records", 0), "of": "",
         "rate": ""},
    ], ["check", "value", "of", "rate"]))
    if report["completeness"].get("invalid_examples"):
        parts.append("<ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in report["completeness"]["invalid_examples"])
                     + "</ul>")
    parts.append("<h3>Missing optional fields</h3>" + _table(
        [{"field": k, "missing": v} for k, v in report["completeness"]["missing"].items()], ["field", "missing"]))
    parts.append("<h3>Labels</h3>" + _table(
        [{"annotator": w, **{v: f"{d[v]['count']} ({d[v]['share']:.0%})" for v in VERDICTS}}
         for w, d in report["balance"]["by_annotator"].items()], ["annotator", *VERDICTS]))
    parts += [f'<h3>{html.escape(name)}</h3><img src="plots/{html.escape(name)}.png">' for name in plot_files]
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")

