"""Constitutional AI on the real model: does the harmlessness of answers to held-out red-team prompts rise?

SmolLM2-135M-Instruct with LoRA. Red-team prompts are the first Human turns of HH-RLHF harmless dialogues, split as
in configs/datasets/hh_rlhf.yaml: training prompts from its training pairs, held-out prompts from its 300 held-out pairs.
Harmlessness is the score of the HH-RLHF harmless reward model of benchmarks/heldout/HELDOUT.md (never trained on the held-out
pairs), on greedy answers.

1. SL-CAI: ``lightning-post fit --config configs/cai/default.yaml`` on ``--prompts`` training prompts (critique -> revision
   with the bundled constitution, plus AI-feedback pairs), exported;
2. RL-CAI: ``lightning-post fit --config configs/cai/rl.yaml`` (DPO with soft labels) from the SL-CAI model;
3. ``lightning-post validate --config configs/ppo/default.yaml`` with each model (base, SL-CAI, RL-CAI) as the policy: the
   reward model scores its greedy answers to the held-out prompts; the comparison is paired, prompt by prompt;
4. ``benchmarks/cai/CAI.md``: the figures, revision statistics, examples and the commands.

    .venv/bin/python benchmarks/cai/cai_harmlessness.py      # from the project root, ../shared beside it
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("heldout", "ppo")]
from heldout_accuracy import ROOT, hh_split, latest_run, run  # noqa: E402
from ppo_reward import paired_scores, reward_model_export, val_answers  # noqa: E402

OUT = ROOT / "benchmarks" / "cai" / "results" / "cai.json"
WORK = ROOT / "mlruns" / "cai-bench"


def red_team_files(train: int, held_out: int) -> tuple[Path, Path]:
    """First Human turns of the HH-RLHF split's training pairs (CAI prompts) and held-out pairs (evaluation)."""
    split = hh_split(640)[2]
    WORK.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, located, n in (("train", split["train"], train), ("heldout", split["val"], held_out)):
        seen, rows = set(), []
        for _, pair in located:
            first = pair["prompt"][0]["content"]
            if first not in seen:
                seen.add(first)
                rows.append({"prompt": first})
        path = WORK / f"{name}_red_team.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:n]))
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="red-team prompts through critique -> revision")
    ap.add_argument("--held-out", type=int, default=64)
    ap.add_argument("--sl-steps", type=int, default=24)
    ap.add_argument("--rl-steps", type=int, default=20)
    ap.add_argument("--fresh", action="store_true", help="delete earlier generations (default: resume them)")
    args = ap.parse_args()
    if args.fresh and WORK.exists():
        shutil.rmtree(WORK)
    train, held_out = red_team_files(args.prompts, args.held_out)
    exe = str(Path(sys.executable).parent / "lightning-post")
    tracking = f"sqlite:///{ROOT}/mlruns/mlflow.db"
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_dir, sl_export, rl_export = WORK / "out", WORK / "sl", WORK / "rl"
    sl_cmd = [exe, "fit", "--config", "configs/cai/default.yaml", "--data.init_args.prompt_files", str(train),
              "--data.init_args.max_prompts", str(args.prompts), "--data.init_args.output_dir", str(out_dir),
              "--trainer.max_steps", str(args.sl_steps), "--trainer.val_check_interval", str(args.sl_steps),
              "--trainer.logger.init_args.experiment_name", "cai-bench-sl", "--export.dirpath", str(sl_export)]
    rl_cmd = [exe, "fit", "--config", "configs/cai/rl.yaml", "--model.init_args.model_name_or_path",
              str(sl_export / "model"), "--data.init_args.train_files", str(out_dir / "feedback.jsonl"),
              "--trainer.max_steps", str(args.rl_steps), "--trainer.val_check_interval", str(args.rl_steps),
              "--trainer.logger.init_args.experiment_name", "cai-bench-rl", "--export.dirpath", str(rl_export)]
    seconds = {"sl_cai": run(sl_cmd, logs / "sl.log"), "rl_cai": run(rl_cmd, logs / "rl.log")}
    reward_model = reward_model_export()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    evals, eval_cmds = {}, []
    for name, model in (("base", "smollm2-135m-instruct"), ("sl_cai", str(sl_export / "model")),
                        ("rl_cai", str(rl_export / "model"))):
        cmd = [exe, "validate", "--config", "configs/ppo/default.yaml", "--model.init_args.model_name_or_path", model,
               "--model.init_args.reward_model", reward_model, "--data.init_args.train_files", str(held_out),
               "--data.init_args.val_files", str(held_out), "--trainer.logger.init_args.experiment_name",
               "cai-bench-eval"]
        seconds[f"eval_{name}"] = run(cmd, logs / f"eval_{name}.log")
        r = latest_run("cai-bench-eval", tracking)
        evals[name] = {"metrics": {k: v for k, v in r.data.metrics.items() if k.startswith("val/")},
                       "answers": val_answers(client, r.info.run_id)}
        eval_cmds.append(cmd)
    revisions = [json.loads(line) for line in (out_dir / "revisions.jsonl").read_text().splitlines()]
    feedback = [json.loads(line) for line in (out_dir / "feedback.jsonl").read_text().splitlines()]
    sl_run, rl_run = latest_run("cai-bench-sl", tracking), latest_run("cai-bench-rl", tracking)
    result = {
        "prompts": len(revisions), "revised": sum(r["revised"] for r in revisions),
        "mean_p_revise": sum(r["p_revise"] for r in revisions) / len(revisions),
        "principles": {p: sum(r["principle"] == p for r in revisions) for p in sorted({r["principle"] for r in revisions})},
        "feedback_pairs": len(feedback), "mean_label": sum(r["label"] for r in feedback) / max(1, len(feedback)),
        "sl_metrics": {k: v for k, v in sl_run.data.metrics.items() if k.startswith(("train/loss", "val/"))},
        "rl_metrics": {k: v for k, v in rl_run.data.metrics.items() if k.startswith(("train/loss", "val/"))},
        "eval": {k: v["metrics"] for k, v in evals.items()},
        "vs_base": {k: paired_scores(evals["base"]["answers"], evals[k]["answers"]) for k in ("sl_cai", "rl_cai")},
        "examples": [{k: r[k] for k in ("prompt", "principle", "initial", "critique", "p_revise", "revision")}
                     for r in revisions if r["revised"]][:3],
        "held_out_prompts": args.held_out, "reward_model": reward_model, "seconds": {k: round(v) for k, v in seconds.items()},
        "commands": [" ".join(["lightning-post", *c[1:]]) for c in (sl_cmd, rl_cmd, *eval_cmds)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    write_report(result, ROOT / "benchmarks" / "cai" / "CAI.md")


def write_report(r: dict, out: Path) -> None:
    import torch

    lines = [
        "# Constitutional AI on SmolLM2-135M-Instruct: harmlessness on held-out red-team prompts",
        "",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"{platform.platform()}",
        "- Model: SmolLM2-135M-Instruct (fp32), LoRA r=16 all-linear; constitution: the bundled five principles "
        "(English), one sampled per prompt, one round, no few-shot demonstrations, revision threshold 0.25, greedy generation (96 new tokens), AI-feedback samples at temperature 0.7.",
        f"- Red-team prompts: first Human turns of HH-RLHF harmless dialogues; {r['prompts']} training prompts, "
        f"{r['held_out_prompts']} held-out prompts from the 300 held-out pairs of configs/data/hh_rlhf.yaml.",
        f"- Harmlessness: the HH-RLHF harmless reward model of benchmarks/heldout/HELDOUT.md (`{r['reward_model']}`), on "
        "greedy answers; higher = judged more harmless.",
        "",
        f"Critique -> revision: the model chose to revise {r['revised']} of {r['prompts']} answers (mean P(yes) "
        f"{r['mean_p_revise']:.3f}); principles drawn: {r['principles']}. AI feedback: {r['feedback_pairs']} pairs, "
        f"mean soft label {r['mean_label']:.3f}.",
        "",
        "| model | `val/scores` (held-out) | change vs base (paired SE) | higher / lower | sign test p | "
        "`val/length` | `val/eos_rate` |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("base", "sl_cai", "rl_cai"):
        m = r["eval"][name]
        if name == "base":
            change = "—"
            counts = p = "—"
        else:
            d = r["vs_base"][name]
            change = f"{d['mean_change']:+.4f} ({d['se']:.4f})"
            counts, p = f"{d['higher']} / {d['lower']}", f"{d['sign_test_p']:.2g}"
        lines.append(f"| {name} | {m['val/scores']:.4f} | {change} | {counts} | {p} | {m['val/length']:.1f} | "
                     f"{m['val/eos_rate']:.3f} |")
    lines += ["", "Training: SL-CAI " + ", ".join(f"`{k}` {v:.4f}" for k, v in sorted(r["sl_metrics"].items())),
              "; RL-CAI " + ", ".join(f"`{k}` {v:.4f}" for k, v in sorted(r["rl_metrics"].items())) + ".",
              "", f"Seconds: {r['seconds']}", "", "Examples (revised answers):", ""]
    for e in r["examples"]:
        lines += [f"- **Prompt:** {e['prompt'][-1]['content'][:200]!r} (principle: {e['principle']}, "
                  f"P(revise) {e['p_revise']:.2f})",
                  f"  - initial: {e['initial'][:240]!r}", f"  - critique: {e['critique'][:240]!r}",
                  f"  - revision: {e['revision'][:240]!r}"]
    lines += ["", "Commands:", ""] + [f"    {c}" for c in r["commands"]]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
