"""Multitask SFT on the real model: SmolLM2-135M-Instruct + LoRA over five T0 tasks and Self-Instruct instructions
(``configs/sft/multitask.yaml``), temperature sampling at T=1 and at T=2, one after the other; per-task validation loss,
exact match and realised task shares read back from MLflow into ``benchmarks/multitask/MULTITASK.md``.

    .venv/bin/python benchmarks/multitask/multitask.py          # from the project root, ../shared beside it
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("heldout", "ppo")]
from heldout_accuracy import ROOT, run  # noqa: E402

OUT = ROOT / "benchmarks" / "multitask" / "results" / "multitask.json"


def metrics_of(run_name: str) -> dict:
    """Final value and full history of every metric of the latest MLflow run with this name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("multitask")
    (found,) = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, k)]
               for k in found.data.metrics if k.startswith(("val/", "data/"))}
    return {"run_id": found.info.run_id, "final": found.data.metrics, "history": history}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 2.0])
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "lightning-post")
    work = ROOT / "mlruns" / "multitask-bench"
    work.mkdir(parents=True, exist_ok=True)
    results, commands = {}, []
    for t in args.temperatures:
        name = f"multitask-T{t:g}"
        cmd = [exe, "fit", "--config", "configs/sft/multitask.yaml", "--data.init_args.temperature", str(t),
               "--trainer.logger.init_args.run_name", name, *args.extra]
        seconds = round(run(cmd, work / f"{name}.log"))
        results[name] = {"temperature": t, "seconds": seconds, **metrics_of(name)}
        commands.append(shlex.join(["lightning-post", *cmd[1:]]))
    OUT.write_text(json.dumps({"runs": results, "commands": commands}, indent=1))
    write_markdown(results, commands)


def write_markdown(results: dict, commands: list[str]) -> None:
    names = list(results)
    tasks = sorted({k.split("/")[2] for r in results.values() for k in r["final"] if k.startswith("data/task_rate/")})
    lines = [
        "# Multitask SFT: temperature sampling T=1 vs T=2",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, 2 CPU cores, no GPU. SmolLM2-135M-Instruct, LoRA r16 "
        "on every linear layer, 30 steps of 8 examples, max length 256, lr 5e-4 cosine; 16 held-out examples per "
        "task. Produced by `.venv/bin/python benchmarks/multitask/multitask.py`.",
        "",
        "## Mixture: planned rate / realised share of the 240 training rows",
        "",
        "| task | examples | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for task in tasks:
        first = results[names[0]]["final"]
        cells = [f"{r['final'][f'data/task_rate/{task}']:.3f} / {r['final'][f'data/task_share/{task}']:.3f}"
                 for r in results.values()]
        lines.append(f"| {task} | {first[f'data/task_examples/{task}']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Held-out loss per task (token mean): after 15 steps -> after 30 steps", "",
              "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task in tasks:
        cells = []
        for r in results.values():
            h = r["history"].get(f"val/{task}/loss", [])
            cells.append(" -> ".join(f"{v:.3f}" for _, v in h) or "-")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Exact match on the classification tasks (16 held-out examples, greedy)", "",
              "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task in tasks:
        key = f"val/{task}/exact_match"
        if key in results[names[0]]["final"]:
            cells = [" -> ".join(f"{v:.3f}" for _, v in r["history"].get(key, [])) for r in results.values()]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "Overall held-out loss: " + ", ".join(f"{n}: {r['final']['val/loss']:.3f}" for n, r in results.items()),
              "", "Time: " + ", ".join(f"{n}: {r['seconds']} s" for n, r in results.items()), "",
              "MLflow runs (experiment `multitask`): " + ", ".join(f"{n} = {r['run_id']}" for n, r in results.items()),
              "", "## Commands", "", *[f"    {c}" for c in commands], ""]
    (ROOT / "benchmarks" / "multitask" / "MULTITASK.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
