"""PPO on the real model: does the reward model's mean score on held-out prompts rise, with the KL bounded?

SmolLM2-135M-Instruct with LoRA (configs/ppo.yaml); the reward model is the one trained on HH-RLHF harmless pairs by
``benchmarks/heldout_accuracy.py --methods reward`` (its export, found through the MLflow run recorded in
``benchmarks/results/heldout.json``, or ``--reward-model``). Prompts: those of the same split of
configs/data/hh_rlhf.yaml -- training prompts from the reward model's training pairs, held-out prompts from its 300
held-out pairs (never seen by the reward model or the policy).

1. ``lightning-post validate``: greedy answers of the starting policy to the held-out prompts, scored;
2. ``lightning-post fit``: ``--steps`` PPO steps, then the same validation;
3. write ``benchmarks/PPO.md`` with both scores, the KL of the answers to the reference, and the commands.

    .venv/bin/python benchmarks/ppo_reward.py            # from the project root, ../shared beside it
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_accuracy import ROOT, RESULTS, hh_split, latest_run, run  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "ppo.json"


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
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--held-out", type=int, default=48)
    ap.add_argument("--train-prompts", type=int, default=640)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more lightning-post arguments")
    args = ap.parse_args()
    reward_model = args.reward_model or reward_model_export()
    train, held_out = prompt_files(ROOT / "mlruns" / "ppo-prompts", args.train_prompts, args.held_out)
    exe = str(Path(sys.executable).parent / "lightning-post")
    tracking = f"sqlite:///{ROOT}/mlruns/mlflow.db"
    experiment = "ppo-heldout"
    common = [
        "--config", "configs/ppo.yaml", "--model.init_args.reward_model", reward_model,
        "--data.init_args.train_files", str(train), "--data.init_args.val_files", str(held_out),
        "--trainer.logger.init_args.experiment_name", experiment, *args.extra,
    ]
    logs = ROOT / "mlruns" / "heldout-logs"
    logs.mkdir(parents=True, exist_ok=True)
    before_cmd = [exe, "validate", *common]
    after_cmd = [exe, "fit", *common, "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval",
                 str(args.steps)]
    t_before = run(before_cmd, logs / "ppo-before.log")
    before = latest_run(experiment, tracking).data.metrics
    t_after = run(after_cmd, logs / "ppo-after.log")
    after_run = latest_run(experiment, tracking)
    after = after_run.data.metrics
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    history = {k: [round(m.value, 4) for m in client.get_metric_history(after_run.info.run_id, k)]
               for k in ("objective/scores", "objective/kl", "ppo/value_loss", "ppo/clipfrac")}
    result = {
        "before": {k: before[k] for k in before if k.startswith("val/")},
        "after": {k: after[k] for k in after if k.startswith("val/")},
        "train_history": history, "steps": args.steps, "held_out_prompts": args.held_out,
        "reward_model": reward_model, "seconds_validate": round(t_before), "seconds_fit": round(t_after),
        "run_id": after_run.info.run_id,
        "commands": [" ".join(["lightning-post", *c[1:]]) for c in (before_cmd, after_cmd)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    write_report(result, ROOT / "benchmarks" / "PPO.md")


def write_report(r: dict, out: Path) -> None:
    import torch

    b, a = r["before"], r["after"]
    lines = [
        "# PPO on SmolLM2-135M-Instruct: reward-model score on held-out prompts",
        "",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"{platform.platform()}",
        "- Policy: SmolLM2-135M-Instruct (fp32), LoRA r=16 all-linear, configs/ppo.yaml (PPO, shared value head, "
        "GAE, k1 KL penalty 0.05, temperature 0.7, 64 new tokens, 16 prompts per rollout, lr 2e-4).",
        f"- Reward model: the HH-RLHF harmless reward model of benchmarks/HELDOUT.md (`{r['reward_model']}`).",
        f"- Held-out prompts: {r['held_out_prompts']} prompts of the 300 held-out HH-RLHF pairs, answered greedily; "
        "`val/kl` is the summed log-ratio policy/reference over each answer's tokens.",
        "",
        "| | before | after |",
        "|---|---|---|",
    ]
    for key in ("val/scores", "val/scores_std", "val/kl", "val/length", "val/eos_rate"):
        lines.append(f"| `{key}` | {b.get(key, float('nan')):.4f} | {a.get(key, float('nan')):.4f} |")
    n = r["held_out_prompts"]
    se = ((b["val/scores_std"] ** 2 + a["val/scores_std"] ** 2) / n) ** 0.5
    change = a["val/scores"] - b["val/scores"]
    verdict = "rose" if change > 2 * se else "fell" if change < -2 * se else "did not change beyond noise"
    lines += ["", f"Result: the held-out mean score changed by {change:+.4f} (standard error of the difference about "
              f"{se:.3f}, from the two score spreads over {n} prompts): it {verdict}."]
    lines += ["", f"{r['steps']} PPO steps; fit took {r['seconds_fit']} s, the validation before {r['seconds_validate']} s.",
              "", "Per training step (sampled answers to training prompts):", ""]
    for key, values in r["train_history"].items():
        lines.append(f"- `{key}`: {values}")
    lines += ["", "Commands:", ""] + [f"    {c}" for c in r["commands"]]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
