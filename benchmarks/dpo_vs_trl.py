"""DPO side by side: lightning-post's DPOModule against TRL's DPOTrainer, same machine, same settings.

    bash benchmarks/setup_trl.sh                      # TRL 1.16 in benchmarks/.trl-venv (never a project dependency)
    .venv/bin/python benchmarks/dpo_vs_trl.py         # writes benchmarks/DPO_VS_TRL.md

Settings are those of ../shared/FACTS.md's TRL measurement: SmolLM2-135M-Instruct, fp32, LoRA r=16 (alpha 32,
dropout 0, all linear layers), HH-RLHF harmless pairs, batch 4 pairs, max length 512, beta 0.1, sigmoid loss,
reference = the same network with adapters disabled. Both get the same pairs in the same order (no shuffling,
pairs that fit in 512 tokens so neither truncates), AdamW at a constant learning rate, gradient clipping at 1.0,
no gradient checkpointing. Each framework runs in its own process (peak RSS is that process's), and the rounds
alternate between the two so that drift of the machine affects both alike. Throughput excludes the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mlruns" / "bench-dpo"
HH = ROOT.parent / "shared" / "data" / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz"
TRL_PY = ROOT / "benchmarks" / ".trl-venv" / "bin" / "python"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


# ---- workers (each runs in its own process) ----------------------------------------------------------------------
def worker_ours(a) -> dict:
    import lightning as L
    import torch

    from lightning_post import DPOModule, PeftSettings, PreferenceDataModule
    from lightning_post.optim import OptimSettings

    times, losses = [], []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.t)
            losses.append(trainer.callback_metrics["train/loss"].item())

    L.seed_everything(a.seed)
    torch.set_num_threads(a.threads)
    module = DPOModule(
        a.model, peft=PeftSettings(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
        optim=OptimSettings(name="adamw", lr=a.lr, weight_decay=0.0, schedule="constant", warmup_steps=0),
        loss_type="sigmoid", beta=0.1, gradient_clip_val=1.0,
    )
    data = PreferenceDataModule(train_files=a.data, val_files=a.data, template="raw", tokenizer=a.model,
                                max_length=a.max_length, batch_size=a.batch_size, shuffle=False, seed=a.seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=a.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[Clock()])
    trainer.fit(module, data)
    return {"times": times, "losses": losses}


def worker_trl(a) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(a.threads)
    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    class InOrder(DPOTrainer):  # the same pair order as lightning-post's shuffle=False
        def _get_train_sampler(self, *args, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    config = DPOConfig(
        output_dir=str(WORK / "trl-out"), per_device_train_batch_size=a.batch_size, max_length=a.max_length,
        beta=0.1, loss_type=["sigmoid"], learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=a.steps, logging_steps=1, report_to=[], seed=a.seed,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, save_strategy="no",
        dataloader_num_workers=0, remove_unused_columns=False,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = load_dataset("json", data_files=a.data, split="train")
    trainer = InOrder(model=model, args=config, train_dataset=dataset, processing_class=tok, peft_config=peft_config,
                      callbacks=[Clock()])
    trainer.train()
    return {"times": times, "losses": losses}


# ---- driver ------------------------------------------------------------------------------------------------------
def prepare_pairs(n: int, max_length: int, model: str) -> Path:
    """The first ``n`` valid HH-RLHF pairs whose both sides fit in ``max_length`` tokens, as prompt/chosen/rejected."""
    from lightning_post.data.pairs import normalize_preference_record
    from lightning_post.data.records import DataError
    from lightning_post.models.loading import load_tokenizer
    import gzip

    tok = load_tokenizer(model)
    out = WORK / f"pairs-{n}-{max_length}.jsonl"
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            try:
                pair = normalize_preference_record(json.loads(line), f"{HH}:{i}")
            except DataError:
                continue
            if pair["chosen"].strip() == pair["rejected"].strip():
                continue
            longest = max(len(tok(pair["raw_prompt"] + pair[k])["input_ids"]) for k in ("chosen", "rejected"))
            if longest + 1 <= max_length:  # + EOS
                rows.append({"prompt": pair["raw_prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]})
            if len(rows) == n:
                break
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def launch(python: Path, which: str, a, data: Path) -> dict:
    cmd = [str(python), __file__, "--worker", which, "--data", str(data), "--model", a.model, "--steps", str(a.steps),
           "--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--lr", str(a.lr),
           "--threads", str(a.threads), "--seed", str(a.seed)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{which} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.time() - start
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["ours", "trl"])
    ap.add_argument("--data")
    ap.add_argument("--model", default=None, help="model folder; default: lightning-post's converted SmolLM2")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "DPO_VS_TRL.md"))
    a = ap.parse_args()
    if a.worker:
        result = (worker_ours if a.worker == "ours" else worker_trl)(a)
        result["peak_rss_gb"] = peak_rss_gb()
        print(json.dumps(result))
        return
    if not TRL_PY.exists():
        sys.exit("TRL is not installed: run `bash benchmarks/setup_trl.sh` first")
    if a.model is None:
        from lightning_post.models.loading import resolve_model_path

        a.model = resolve_model_path("smollm2-135m-instruct")
    data = prepare_pairs(a.batch_size * a.steps, a.max_length, a.model)
    runs: dict[str, list[dict]] = {"lightning-post": [], "TRL 1.16": []}
    for r in range(a.rounds):
        for name, python, which in (("lightning-post", Path(sys.executable), "ours"), ("TRL 1.16", TRL_PY, "trl")):
            res = launch(python, which, a, data)
            runs[name].append(res)
            print(f"round {r + 1} {name}: {a.batch_size * (len(res['times']) - 1) / sum(res['times'][1:]):.3f} "
                  f"pairs/s, peak RSS {res['peak_rss_gb']:.2f} GB", flush=True)
    report(runs, a, data, " ".join(["python", *[Path(sys.argv[0]).relative_to(ROOT).as_posix()
                                                 if Path(sys.argv[0]).is_absolute() else sys.argv[0]], *sys.argv[1:]]))


def report(runs: dict, a, data: Path, command: str) -> None:
    import torch

    def pairs_per_s(res):
        return a.batch_size * (len(res["times"]) - 1) / sum(res["times"][1:])

    ours, trl = runs["lightning-post"], runs["TRL 1.16"]
    mean = {k: sum(pairs_per_s(r) for r in v) / len(v) for k, v in runs.items()}
    lines = [
        "# DPO: lightning-post vs TRL's DPOTrainer on the same machine",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({a.threads} threads), no GPU, "
        f"torch {torch.__version__}, {platform.platform()}",
        f"- Command: `{command}` (TRL in its own venv, `bash benchmarks/setup_trl.sh`)",
        f"- Settings: SmolLM2-135M-Instruct fp32, LoRA r=16 alpha=32 dropout=0 all-linear, sigmoid DPO beta=0.1, "
        f"batch {a.batch_size} pairs, max length {a.max_length}, AdamW lr {a.lr} constant, clip 1.0, no gradient "
        f"checkpointing, reference = adapters disabled; the first {a.batch_size * a.steps} HH-RLHF harmless pairs "
        f"that fit in {a.max_length} tokens, in file order, {a.steps} steps per run, {a.rounds} alternating rounds.",
        "- pairs/s counts steps 2..N (the first step includes one-off work in both); peak RSS is the whole process.",
        "",
        "| framework | round | pairs/s | mean step s | peak RSS GB | wall s (incl. load) |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in runs.items():
        for i, res in enumerate(results, start=1):
            lines.append(f"| {name} | {i} | {pairs_per_s(res):.3f} | {sum(res['times'][1:]) / (len(res['times']) - 1):.2f} "
                         f"| {res['peak_rss_gb']:.2f} | {res['wall_s']:.0f} |")
    lines += [
        "",
        f"**Ratio (lightning-post / TRL), mean pairs/s: {mean['lightning-post'] / mean['TRL 1.16']:.2f}×**; "
        f"peak RSS ratio {sum(r['peak_rss_gb'] for r in ours) / sum(r['peak_rss_gb'] for r in trl):.2f}.",
        "",
        "Losses of the first steps (same maths: both start at log 2 = 0.6931):",
        "",
        "| step | " + " | ".join(str(i + 1) for i in range(len(ours[0]["losses"]))) + " |",
        "|---|" + "---|" * len(ours[0]["losses"]),
        "| lightning-post | " + " | ".join(f"{x:.4f}" for x in ours[0]["losses"]) + " |",
        "| TRL 1.16 | " + " | ".join(f"{x:.4f}" for x in trl[0]["losses"]) + " |",
        "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
