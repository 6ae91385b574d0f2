"""PPO on the real model: does the reward model's mean score on held-out prompts rise, with the KL bounded?

SmolLM2-135M-Instruct with LoRA (configs/ppo/default.yaml); the reward model is the one trained on HH-RLHF harmless pairs by
``benchmarks/heldout/heldout_accuracy.py --methods reward`` (its export, found through the MLflow run recorded in
``benchmarks/heldout/results/heldout.json``, or ``--reward-model``). Prompts: those of the same split of
configs/datasets/hh_rlhf.yaml -- training prompts from the reward model's training pairs, held-out prompts from its 300
held-out pairs (never seen by the reward model or the policy).

1. ``lightning-post validate``: greedy answers of the starting policy to the held-out prompts, scored;
2. ``lightning-post fit``: ``--steps`` PPO steps, then the same validation;
3. write ``benchmarks/ppo/PPO.md`` with both scores, the KL of the answers to the reference, and the commands.

    .venv/bin/python benchmarks/ppo/ppo_reward.py            # from the project root, ../shared beside it
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("heldout", "ppo")]
from heldout_accuracy import ROOT, RESULTS, hh_split, latest_run, run  # noqa: E402

OUT = ROOT / "benchmarks" / "ppo" / "results" / "ppo.json"


def prompt_files(folder: Path, train: int, held_out: int) -> tuple[Path, Path]:
    split = hh_split(train)[2]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, located in (("train", split["train"]), ("heldout", split["val"][:held_out])):
        path = folder / f"{name}_prompts.jsonl"
        path.write_text("".join(json.dumps({"prompt": p["prompt"]}, ensure_ascii=False) + "\n" for _, p in located))
        paths.append(path)
    return paths[0], paths[1]


def reward_model_export() -> str:
    from mlflow import MlflowClient

    run_id = json.loads(RESULTS.read_text())["reward"]["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    return client.get_run(run_id).data.tags["export_model"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward-model", default=None, help="reward model folder (default: the held-out benchmark's)")
    ap.add_argument("--steps", type=int, default=96, help="optimizer steps (4 per rollout in ppo.yaml)")
    ap.add_argument("--held-out", type=int, default=64)
    ap.add_argument("--train-prompts", type=int, default=640)
    ap.add_argument("--reuse-fit", default=None, help="MLflow run id of an earlier PPO fit to score again (skips fit)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more lightning-post arguments")
    args = ap.parse_args()
    reward_model = args.reward_model or reward_model_export()
    train, held_out = prompt_files(ROOT / "mlruns" / "ppo-prompts", args.train_prompts, args.held_out)
    exe = str(Path(sys.executable).parent / "lightning-post")
    tracking = f"sqlite:///{ROOT}/mlruns/mlflow.db"
    experiment = "ppo-heldout"
    common = [
        "--config", "configs/ppo/default.yaml", "--model.init_args.reward_model", reward_model,
        "--data.init_args.train_files", str(train), "--data.init_args.val_files", str(held_out),
        "--trainer.logger.init_args.experiment_name", experiment, *args.extra,
    ]
    logs = ROOT / "mlruns" / "heldout-logs"
    logs.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    # 1. the starting policy on the held-out prompts
    before_cmd = [exe, "validate", *common]
    t_before = run(before_cmd, logs / "ppo-before.log")
    before_run = latest_run(experiment, tracking)
    # 2. PPO (no validation inside: the same validate command scores the final checkpoint)
    fit_cmd = [exe, "fit", *common, "--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0"]
    if args.reuse_fit:
        fit_run = client.get_run(args.reuse_fit)
        t_fit = (fit_run.info.end_time - fit_run.info.start_time) / 1000
        fit_cmd = [exe, f"(reused the fit of MLflow run {args.reuse_fit})"]
    else:
        t_fit = run(fit_cmd, logs / "ppo-fit.log")
        fit_run = latest_run(experiment, tracking)
    ckpt = ROOT / "mlruns" / "runs" / fit_run.info.experiment_id / fit_run.info.run_id / "checkpoints" / "last.ckpt"
    # 3. the trained policy on the same prompts
    after_cmd = [exe, "validate", *common, "--ckpt_path", str(ckpt)]
    run(after_cmd, logs / "ppo-after.log")
    after_run = latest_run(experiment, tracking)
    before, after = before_run.data.metrics, after_run.data.metrics
    paired = paired_scores(val_answers(client, before_run.info.run_id), val_answers(client, after_run.info.run_id))
    history = {k: [round(m.value, 4) for m in client.get_metric_history(fit_run.info.run_id, k)]
               for k in ("objective/scores", "objective/kl", "ppo/value_loss", "ppo/clipfrac", "objective/length",
                         "objective/eos_rate", "objective/distinct_1", "objective/distinct_2")}
    result = {
        "before": {k: before[k] for k in before if k.startswith("val/")},
        "after": {k: after[k] for k in after if k.startswith("val/")},
        "paired": paired, "settings": " ".join(args.extra) or "configs/ppo/default.yaml as is",
        "train_history": history, "steps": args.steps, "held_out_prompts": args.held_out,
        "reward_model": reward_model, "seconds_validate": round(t_before), "seconds_fit": round(t_fit),
        "run_id": fit_run.info.run_id, "collapse_guard": fit_run.data.tags.get("collapse_guard"),
        "rollouts": len(history["objective/scores"]),
        "commands": [" ".join(["lightning-post", *c[1:]]) for c in (before_cmd, fit_cmd, after_cmd)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    write_report(result, ROOT / "benchmarks" / "ppo" / "PPO.md")


def val_answers(client, run_id: str) -> list[dict]:
    """The last validation's per-prompt answers of a run (``val_answers/step<N>.json``, written by PPOModule)."""
    import tempfile

    names = sorted(f.path for f in client.list_artifacts(run_id, "val_answers"))
    if not names:
        sys.exit(f"run {run_id} logged no val_answers table")
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, names[-1], tmp)).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def paired_scores(before: list[dict], after: list[dict]) -> dict:
    """Mean score change over the same held-out prompts, its paired standard error and a sign test."""
    from lightning_post.stats import mean_and_se, sign_test

    if [r["prompt_key"] for r in before] != [r["prompt_key"] for r in after]:
        sys.exit("the two validations did not answer the same prompts in the same order")
    diffs = [a["score"] - b["score"] for b, a in zip(before, after)]
    n = len(diffs)
    mean, se = mean_and_se(diffs)
    up, down, p = sign_test(diffs)
    changed = [(b, a) for b, a in zip(before, after) if b["response"] != a["response"]]
    examples = [{"prompt": b["prompt"], "before": b["response"], "score_before": round(b["score"], 3),
                 "after": a["response"], "score_after": round(a["score"], 3)} for b, a in changed[:3]]
    return {"n": n, "mean_change": mean, "se": se, "higher": up, "lower": down, "sign_test_p": p,
            "answers_changed": len(changed), "examples": examples}


def write_report(r: dict, out: Path) -> None:
    import torch

    b, a = r["before"], r["after"]
    lines = [
        "# PPO on SmolLM2-135M-Instruct: reward-model score on held-out prompts",
        "",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"{platform.platform()}",
        "- Policy: SmolLM2-135M-Instruct (fp32), LoRA r=16 all-linear, configs/ppo/default.yaml (PPO, shared value head, "
        "GAE, k1 KL penalty 0.05, missing-EOS penalty 1.0, temperature 0.7, 64 new tokens, 16 prompts per rollout, "
        f"2 PPO epochs x 2 minibatches, lr 5e-4); overrides: {r['settings']}.",
        f"- Reward model: the HH-RLHF harmless reward model of benchmarks/heldout/HELDOUT.md (`{r['reward_model']}`).",
        f"- Held-out prompts: {r['held_out_prompts']} prompts of the 300 held-out HH-RLHF pairs, answered greedily; "
        "`val/kl` is the summed log-ratio policy/reference over each answer's tokens.",
        "",
        "| | before | after |",
        "|---|---|---|",
    ]
    for key in ("val/scores", "val/scores_std", "val/kl", "val/length", "val/eos_rate"):
        lines.append(f"| `{key}` | {b.get(key, float('nan')):.4f} | {a.get(key, float('nan')):.4f} |")
    d = r["paired"]
    change, se = d["mean_change"], d["se"]
    verdict = "rose" if change > 2 * se else "fell" if change < -2 * se else "did not change beyond noise"
    lines += ["", f"Result: over the same {d['n']} held-out prompts the mean score changed by {change:+.4f} (paired "
              f"standard error {se:.4f}): it {verdict}. The score rose on {d['higher']} prompts and fell on "
              f"{d['lower']} (sign test p = {d['sign_test_p']:.2g}); {d['answers_changed']} greedy answers changed."]
    guard = r.get("collapse_guard")
    if "collapse_guard" in r:  # runs from before the guard have no such entry
        lines += ["", f"Collapse guard: {'it fired after rollout ' + str(r['rollouts']) + ': ' + guard if guard else 'quiet: every watched statistic stayed above its share of the start'}."]
    lines += ["", f"{r['steps']} optimizer steps ({r['steps'] // 4} rollouts); fit took {r['seconds_fit']} s, the validation before {r['seconds_validate']} s.",
              "", "Per training step (sampled answers to training prompts):", ""]
    for key, values in r["train_history"].items():
        lines.append(f"- `{key}`: {values}")
    if d["examples"]:
        lines += ["", "Examples of changed answers (held-out prompts):", ""]
        for e in d["examples"]:
            lines += [f"- **Prompt:** {e['prompt'][:200]!r}",
                      f"  - before ({e['score_before']}): {e['before'][:240]!r}",
                      f"  - after ({e['score_after']}): {e['after'][:240]!r}"]
    lines += ["", "Commands:", ""] + [f"    {c}" for c in r["commands"]]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
