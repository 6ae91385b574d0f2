"""DDP against FSDP2 on the same processes: peak resident memory per process and tokens/s, full fine-tuning.

    .venv/bin/python benchmarks/fsdp/fsdp_memory.py               # writes benchmarks/fsdp/FSDP.md (about 6 minutes, 2 CPU cores)
    .venv/bin/python benchmarks/fsdp/fsdp_memory.py --accelerator gpu --devices 8 --precision bf16-mixed

Each case is one `lightning-post fit` of SmolLM2-135M-Instruct in full (no LoRA: the optimizer state is what FSDP
shards), AdamW, on the bundled instructions, `--steps` steps of `--batch-size` rows per process. Peak memory is the
largest resident set of any process of the run (``RUSAGE_CHILDREN``: every rank is a descendant of the command);
on a GPU, add the MLflow metric of your choice. Tokens/s is the mean of the run's logged ``train/tokens_per_sec``
after the first step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = {"ddp": ROOT / "configs/strategies/ddp.yaml", "fsdp2": ROOT / "configs/strategies/fsdp.yaml"}


def run_case(strategy: str, args) -> dict:
    """One fit in a fresh process tree; returns its peak RSS (MiB), tokens/s, losses and seconds."""
    from mlflow import MlflowClient

    work = Path(tempfile.mkdtemp(prefix=f"fsdp-bench-{strategy}-"))
    cmd = [sys.executable, "-m", "lightning_post.cli", "fit", "--config", str(ROOT / "configs/sft/default.yaml"),
           "--config", str(STRATEGIES[strategy]), "--trainer.accelerator", args.accelerator,
           "--trainer.devices", str(args.devices), "--trainer.precision", args.precision,
           "--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0",
           "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]", "--samples.enabled", "false",
           "--export.enabled", "false", "--model.init_args.peft", "null", "--data.init_args.batch_size",
           str(args.batch_size), "--data.init_args.max_length", str(args.max_length)]
    script = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
              "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script, *cmd], cwd=work, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{strategy}: exit {out.returncode}\n{out.stderr[-3000:]}")
    peak_kib = int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("PEAK_KIB")))
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    run = client.search_runs(client.get_experiment_by_name("sft").experiment_id)[0]
    history = lambda key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),  # noqa: E731
                                                    key=lambda m: m.step)]
    return {"strategy": strategy, "peak_mib": peak_kib / 1024, "tokens_per_sec": statistics.mean(
        history("train/tokens_per_sec")[1:]), "losses": history("train/loss"), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "fsdp" / "FSDP.md"))
    args = ap.parse_args()
    rows = [run_case(s, args) for s in ("ddp", "fsdp2")]
    ddp, fsdp = rows
    lines = [
        "# DDP vs FSDP2: memory per process, full fine-tuning of SmolLM2-135M-Instruct",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, 'benchmarks/fsdp/fsdp_memory.py', *sys.argv[1:]])}`  ",
        f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), {args.accelerator} x "
        f"{args.devices}, precision {args.precision}; {args.steps} steps of {args.batch_size} rows per process "
        f"(max length {args.max_length}), AdamW; {time.strftime('%Y-%m-%d')}.",
        "",
        "| strategy | peak RSS per process (MiB) | real tokens/s | first losses | seconds (with loading) |",
        "|---|---|---|---|---|",
        *(f"| {r['strategy']} | {r['peak_mib']:.0f} | {r['tokens_per_sec']:.0f} | "
          f"{', '.join(f'{v:.4f}' for v in r['losses'][:4])} | {r['seconds']:.0f} |" for r in rows),
        "",
        f"FSDP2 / DDP: memory {fsdp['peak_mib'] / ddp['peak_mib']:.2f}x, throughput "
        f"{fsdp['tokens_per_sec'] / ddp['tokens_per_sec']:.2f}x. The losses agree "
        f"(largest difference {max(abs(a - b) for a, b in zip(ddp['losses'], fsdp['losses'])):.1e}): the same "
        "global batch and the same maths.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
