"""Evaluation and A/B test on the real model: SmolLM2-135M-Instruct before and after DPO on HH-RLHF harmless pairs.

The "after" model is the DPO export of benchmarks/heldout/HELDOUT.md (found through the MLflow run recorded in
``benchmarks/heldout/results/heldout.json``, or ``--after``).

1. ``lightning-post evaluate --config configs/evaluate/default.yaml`` for each model: instruction following on Self-Instruct's
   user-oriented tasks (BLEU, ROUGE, BERTScore against the references; the LLM judge's win rate against
   text-davinci-003's answers), the bundled multiple-choice questions, and the safety probes;
2. ``lightning-post abtest --config configs/abtest/default.yaml`` with A = before and B = after;
3. ``benchmarks/evaluation/EVALUATION.md``: the figures, the decision and the commands.

    .venv/bin/python benchmarks/evaluation/evaluation.py          # from the project root, ../shared beside it
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("heldout", "ppo")]
from heldout_accuracy import RESULTS, ROOT, run  # noqa: E402

OUT = ROOT / "benchmarks" / "evaluation" / "results" / "evaluation.json"
WORK = ROOT / "mlruns" / "eval-bench"


def dpo_export() -> str:
    from mlflow import MlflowClient

    run_id = json.loads(RESULTS.read_text())["dpo"]["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    return client.get_run(run_id).data.tags["export_model"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="smollm2-135m-instruct")
    ap.add_argument("--after", default=None, help="the trained model (default: the held-out benchmark's DPO export)")
    ap.add_argument("--before-report", default=None,
                    help="an earlier `evaluate` report.json of the before model, used instead of evaluating it again "
                         "(its source is named in the report)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more arguments for both commands")
    args = ap.parse_args()
    after = args.after or dpo_export()
    exe = str(Path(sys.executable).parent / "lightning-post")
    WORK.mkdir(parents=True, exist_ok=True)
    reports, commands, seconds = {}, [], {}
    models = [("before", args.before), ("after", after)]
    if args.before_report:
        reports["before"] = json.loads(Path(args.before_report).read_text())
        models = models[1:]
    for name, model in models:
        cmd = [exe, "evaluate", "--config", "configs/evaluate/default.yaml", "--model", model, "--output_dir",
               str(WORK / f"evaluate-{name}"), "--run_name", f"evaluate-{name}", *args.extra]
        seconds[f"evaluate_{name}"] = round(run(cmd, WORK / f"evaluate-{name}.log"))
        reports[name] = json.loads((WORK / f"evaluate-{name}" / "report.json").read_text())
        commands.append(cmd)
    cmd = [exe, "abtest", "--config", "configs/abtest/default.yaml", "--model_a", args.before, "--model_b", after,
           "--output_dir", str(WORK / "abtest"), "--run_name", "abtest-before-after", *args.extra]
    seconds["abtest"] = round(run(cmd, WORK / "abtest.log"))
    ab = json.loads((WORK / "abtest" / "report.json").read_text())
    commands.append(cmd)
    result = {"before": args.before, "after": after, "evaluate": reports, "abtest": ab, "seconds": seconds,
              "before_report": args.before_report,
              "commands": [" ".join(["lightning-post", *c[1:]]) for c in commands]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    write_report(result, ROOT / "benchmarks" / "evaluation" / "EVALUATION.md")


def _row(label: str, before, after, fmt: str = "{:.3f}") -> str:
    def f(x):
        return "—" if x is None else fmt.format(x)

    return f"| {label} | {f(before)} | {f(after)} |"


def write_report(r: dict, out: Path) -> None:
    import torch

    b, a = r["evaluate"]["before"], r["evaluate"]["after"]
    lines = [
        "# Evaluation and A/B test: SmolLM2-135M-Instruct before and after DPO",
        "",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"{platform.platform()}",
        f"- Before: `{r['before']}`; after: `{r['after']}` (DPO on 640 HH-RLHF harmless pairs, LoRA r16, 80 steps; "
        "benchmarks/heldout/HELDOUT.md).",
        "- Settings: configs/evaluate/default.yaml and configs/abtest/default.yaml (greedy answers, 96 new tokens).",
        "- BLEU: sacrebleu " + "; ".join(f"{k}: `{v}`" for k, v in b["text"].get("bleu_signature", {}).items()) +
        "; ROUGE on Unicode words (Korean: mecab morphemes); BERTScore F1 each answer against its own reference, "
        f"encoder `{Path(b['text'].get('bertscore_encoder', '?')).name}` (languages: "
        f"{b['text'].get('bertscore_languages')}).",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    for key in ("bleu", "corpus_bleu", "rouge1", "rouge2", "rougeL", "bertscore"):
        lines.append(_row(f"{key} vs references ({b['prompts']} Self-Instruct tasks)", b["text"].get(key),
                          a["text"].get(key), "{:.4f}"))
    for lang in b["text"].get("by_language", {}):  # the per-language breakdown (the tasks are English)
        if len(b["text"]["by_language"]) > 1:
            lines.append(_row(f"  rougeL, {lang} ({b['text']['by_language'][lang]['n']} tasks)",
                              b["text"]["by_language"][lang]["rougeL"],
                              a["text"]["by_language"].get(lang, {}).get("rougeL"), "{:.4f}"))
    if "judge" in b:
        lines.append(_row("judge win rate vs text-davinci-003 (ties half)", b["judge"]["win_rate_vs_baseline"],
                          a["judge"]["win_rate_vs_baseline"]))
    lines.append(_row(f"multiple choice acc ({b['knowledge']['questions']} questions, chance "
                      f"{b['knowledge']['chance']:.2f})", b["knowledge"]["acc"], a["knowledge"]["acc"]))
    lines.append(_row("multiple choice acc_norm", b["knowledge"]["acc_norm"], a["knowledge"]["acc_norm"]))
    sb, sa = b["safety"], a["safety"]
    for key, label in (("refusal_rate", "refusal rate, HH-RLHF red-team requests"),
                       ("jailbreak_refusal_rate", "refusal rate under jailbreak templates (mean)"),
                       ("jailbreak_drop", "drop in refusals under jailbreaks"),
                       ("over_refusal_rate", "over-refusal: refusals of 24 harmless prompts"),
                       ("empty_answer_rate", "empty answers to the refusal probes"),
                       ("pii_answer_rate", "privacy probes: answers with personal data"),
                       ("privacy_refusal_rate", "privacy probes: refusals")):
        lines.append(_row(label, sb.get(key), sa.get(key)))
    if "crows_pairs" in sb:
        lines.append(_row(f"CrowS-Pairs: prefers the stereotype ({sb['crows_pairs']['pairs']} pairs; 0.5 = unbiased)",
                          sb["crows_pairs"]["stereotype_preference"], sa["crows_pairs"]["stereotype_preference"]))
        for kind in sb["crows_pairs"]["by_type"]:
            lines.append(_row(f"  CrowS-Pairs {kind}", sb["crows_pairs"]["by_type"][kind]["stereotype_preference"],
                              sa["crows_pairs"]["by_type"][kind]["stereotype_preference"]))
    ab = r["abtest"]
    s = ab["stats"]
    lines += [
        "", "## A/B test (A = before, B = after)", "",
        f"- Verdicts ({ab['judge']} judge): B wins {s['wins']}, ties {s['ties']}, A wins {s['losses']} of {s['n']}.",
        f"- Win rate of B (ties half) {s['win_rate']:.3f}, 95% bootstrap interval [{s['win_rate_ci'][0]:.3f}, "
        f"{s['win_rate_ci'][1]:.3f}]; decisive win rate {s['decisive_win_rate']:.3f}, Wilson interval "
        f"[{s['decisive_win_rate_ci'][0]:.3f}, {s['decisive_win_rate_ci'][1]:.3f}]; sign test p = {s['sign_test_p']:.3g}.",
        f"- Sample size: {s['needed_decisive']} decisive comparisons detect a decisive win rate of {s['effect']} "
        f"(alpha {s['alpha']}, power {s['power']}).",
        f"- Safety regressions of B: {ab['safety_regressions'] or 'none'}.",
        f"- Rule: {ab['rule']}",
        f"- **Decision: {ab['decision']}** — {ab['reason']}.",
        "", f"Seconds: {r['seconds']}", "",
        *([f"The before model's figures are the `evaluate` report `{r['before_report']}` (an earlier run of the same "
           "command on the same model and data), not evaluated again here.", ""] if r.get("before_report") else []),
        "Commands:", "",
    ] + [f"    {c}" for c in r["commands"]]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
