"""Which sacrebleu tokenizer for Korean BLEU: whitespace-based ``13a``, ``char`` or ``ko-mecab`` (morphemes).

Measured on the 60 Korean preference pairs of ``lightning_post/resources/preferences.jsonl``: each pair's two
replies answer the same prompt, so a tokenizer that sees shared content should score reply ``rejected_i`` higher
against its own ``chosen_i`` than against the chosen reply of another prompt. Reported per tokenizer:

- ``ranking``: the share of (i, j != i) with BLEU(rejected_i | chosen_i) > BLEU(rejected_i | chosen_j), ties half
  (0.5 = no signal; an AUC);
- ``zero``: the share of same-prompt pairs whose sentence BLEU is 0 (no graded signal at all);
- the ROUGE-1 of the same ranking, with Unicode words and with mecab morphemes.

    .venv/bin/python benchmarks/evaluation/korean_bleu.py     # writes benchmarks/evaluation/results/korean_bleu.json, prints a table
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from lightning_post.scoring.text_metrics import sentence_bleu, sentence_rouge

ROOT = Path(__file__).resolve().parents[2]


def ranking(score, chosen: list[str], rejected: list[str]) -> tuple[float, float]:
    own = [score(r, c) for r, c in zip(rejected, chosen)]
    wins = total = 0.0
    for i, r in enumerate(rejected):
        for j, c in enumerate(chosen):
            if i != j:
                other = score(r, c)
                wins += 1.0 if own[i] > other else 0.5 if own[i] == other else 0.0
                total += 1
    return wins / total, sum(x == 0 for x in own) / len(own)


def main() -> None:
    rows = [json.loads(line) for line in (ROOT / "lightning_post" / "resources" / "preferences.jsonl").open()]
    korean = [r for r in rows if r.get("language") == "ko"]
    chosen, rejected = [r["chosen"] for r in korean], [r["rejected"] for r in korean]
    result = {"pairs": len(korean), "machine": platform.platform(), "command": "benchmarks/evaluation/korean_bleu.py",
              "bleu": {}, "rouge1": {}}
    for tok in ("13a", "char", "ko-mecab"):
        auc, zero = ranking(lambda p, r: sentence_bleu(p, r, tok), chosen, rejected)
        result["bleu"][tok] = {"ranking": round(auc, 4), "zero": round(zero, 4)}
    for lang, name in (("en", "unicode words"), ("ko", "mecab morphemes")):
        auc, zero = ranking(lambda p, r: sentence_rouge(p, r, lang)["rouge1"], chosen, rejected)
        result["rouge1"][name] = {"ranking": round(auc, 4), "zero": round(zero, 4)}
    out = ROOT / "benchmarks" / "evaluation" / "results" / "korean_bleu.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(korean)} Korean pairs")
    for metric in ("bleu", "rouge1"):
        for tok, v in result[metric].items():
            print(f"{metric:7s} {tok:16s} ranking {v['ranking']:.3f}  zero {v['zero']:.3f}")


if __name__ == "__main__":
    main()
