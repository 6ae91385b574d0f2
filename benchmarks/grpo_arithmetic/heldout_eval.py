"""Held-out accuracy of one model on the arithmetic task, computed without lightning-post.

Plain transformers: the tokenizer's chat template with the generation prompt, left padding, greedy decoding, and
the verdict "the last integer of the reply equals the record's answer". It runs in our venv and in TRL's, so both
frameworks' models are scored by the same code. Writes one JSON line per problem (prompt, answer, reply, correct).

    python heldout_eval.py MODEL_DIR --tokenizer TOKENIZER_DIR --data heldout.jsonl --out verdicts.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

LAST_INTEGER = re.compile(r"-?\d+")


def verdict(reply: str, answer: str) -> bool:
    """The last integer written in ``reply`` (thousands commas removed) equals ``answer``."""
    found = LAST_INTEGER.findall(reply.replace(",", ""))
    return bool(found) and int(found[-1]) == int(answer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=100)
    a = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.tokenizer or a.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    records = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    start, rows = time.perf_counter(), []
    for i in range(0, len(records), a.batch_size):
        chunk = records[i : i + a.batch_size]
        texts = [
            tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True)
            for r in chunk
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=a.max_new_tokens, pad_token_id=tok.pad_token_id)
        for r, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :]):
            reply = tok.decode(ids, skip_special_tokens=True)
            rows.append({"prompt": r["prompt"], "answer": r["answer"], "reply": reply, "correct": verdict(reply, r["answer"])})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    right = sum(r["correct"] for r in rows)
    print(json.dumps({"model": a.model, "correct": right, "n": len(rows), "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
