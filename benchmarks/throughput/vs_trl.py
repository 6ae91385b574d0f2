"""lightning-post against TRL on the same machine: SFT tokens/s, DPO pairs/s, peak memory, losses and MFU.

    bash benchmarks/setup_trl.sh                 # TRL 1.16 in benchmarks/.trl-venv (never a project dependency)
    .venv/bin/python benchmarks/throughput/vs_trl.py        # writes benchmarks/throughput/RESULTS.md (about 25 minutes on 2 CPU cores)

On a GPU machine (bf16 autocast, TRL's `bf16=True`; both need their packages importable):

    python benchmarks/throughput/vs_trl.py --device cuda --precision bf16 --trl-python python --out RESULTS_GPU.md

The reference case is ../shared/FACTS.md's TRL measurement: SmolLM2-135M-Instruct, fp32, LoRA r=16 (alpha 32,
dropout 0, every linear layer), AdamW at a constant learning rate, gradient clipping at 1.0, no gradient
checkpointing, seed 0.

* SFT: Self-Instruct's 252 user-oriented instructions with text-davinci-003's answers, in file order, batch 8,
  max length 512, loss on the answer only. Both frameworks get the very same token ids: the driver tokenises once
  with lightning-post's `raw` template and hands TRL the `input_ids` and `completion_mask` (TRL skips its own
  tokenisation for such a dataset).
* DPO: the first HH-RLHF harmless pairs that fit in 512 tokens, in file order, batch 4 pairs, beta 0.1, sigmoid
  loss, reference = the same network with the adapters disabled.

Each (framework, task) runs in its own process, so peak resident memory is that process's; the rounds alternate
the two frameworks so that drift of the machine affects both alike. Throughput counts steps 2..N (the first step
holds one-off work in both). "Real" tokens exclude padding. The machine's limit is a large matmul timed in the same
run (fp32 2048^3 on CPU, bf16 8192^3 on GPU). Model FLOPs: 4 x parameters per real token for LoRA (forward 2N,
backward through the frozen weights 2N), plus 2N per token for DPO's reference forward; attention's own FLOPs are
not counted (the usual MFU convention).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
INSTRUCTIONS = "instructions/predictions/text-davinci-003.jsonl"
HH = "preference/hh_rlhf_harmless_base_test.jsonl.gz"
TRL_PY = ROOT / "benchmarks" / ".trl-venv" / "bin" / "python"
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules="all-linear")


def peak_memory_gb(device: str) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


# ---- workers (each runs in its own process) ----------------------------------------------------------------------
def worker_ours(a) -> dict:
    import lightning as L
    import torch

    from lightning_post import DPOModule, InstructionDataModule, PeftSettings, PreferenceDataModule, SFTModule
    from lightning_post.optim import OptimSettings

    times, losses, tokens = [], [], []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if a.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if a.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)
            losses.append(trainer.callback_metrics["train/loss"].item())
            tokens.append(int(batch["attention_mask"].sum()))

    L.seed_everything(a.seed)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    options = json.loads(a.ours_options)
    common = dict(
        peft=PeftSettings(**{**LORA, **options.pop("peft", {})}),
        optim=OptimSettings(name="adamw", lr=a.lr, weight_decay=0.0, schedule="constant", warmup_steps=0),
        gradient_clip_val=1.0, **options,
    )
    if a.task == "sft":
        module = SFTModule(a.model, **common)
        data = InstructionDataModule(train_files=a.data, val_files=a.data, template="raw", tokenizer=a.model,
                                     max_length=a.max_length, batch_size=a.batch_size, shuffle=False, seed=a.seed)
    else:
        module = DPOModule(a.model, loss_type="sigmoid", beta=0.1, **common)
        data = PreferenceDataModule(train_files=a.data, val_files=a.data, template="raw", tokenizer=a.model,
                                    max_length=a.max_length, batch_size=a.batch_size, shuffle=False, seed=a.seed)
    trainer = L.Trainer(accelerator="gpu" if a.device == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if a.precision == "bf16" else "32-true", max_steps=a.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Clock()])
    if not a.profile:
        trainer.fit(module, data)
        return {"times": times, "losses": losses, "tokens": tokens}
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.fit(module, data)
    sort = "self_cuda_time_total" if a.device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)
    out = Path(a.work) / f"profile-{a.task}-{a.device}.txt"
    out.write_text(table)
    print(table, file=sys.stderr)
    return {"times": times, "losses": losses, "tokens": tokens, "profile": str(out)}


def worker_trl(a) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    times, losses, num_tokens = [], [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if a.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if a.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
            if logs and "num_tokens" in logs:
                num_tokens.append(logs["num_tokens"])

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    common = dict(
        output_dir=str(Path(a.work) / "trl-out"), per_device_train_batch_size=a.batch_size, max_length=a.max_length,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=a.steps, logging_steps=1, report_to=[], seed=a.seed, use_cpu=a.device == "cpu",
        bf16=a.precision == "bf16", fp16=False, gradient_checkpointing=False, save_strategy="no",
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    dataset = load_dataset("json", data_files=a.data, split="train")
    if a.task == "sft":
        from trl import SFTConfig as Config, SFTTrainer as Trainer

        config = Config(completion_only_loss=True, packing=False, **common)
    else:
        from trl import DPOConfig as Config, DPOTrainer as Trainer

        config = Config(beta=0.1, loss_type=["sigmoid"], remove_unused_columns=False, **common)

    class InOrder(Trainer):  # the same example order as lightning-post's shuffle=False
        def _get_train_sampler(self, *args, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(model=model, args=config, train_dataset=dataset, processing_class=tok, peft_config=peft_config,
                      callbacks=[Clock()])
    trainer.train()
    return {"times": times, "losses": losses, "num_tokens": num_tokens}


# ---- data --------------------------------------------------------------------------------------------------------
def prepare_sft(a, work: Path, n: int) -> tuple[Path, Path]:
    """The instructions as prompt/completion text (for lightning-post) and as the same token ids (for TRL)."""
    from lightning_post.data.instruction import InstructionDataModule

    text = work / "sft-text.jsonl"
    rows = []
    with open(Path(a.data_dir) / INSTRUCTIONS, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            rows.append({"prompt": r["prompt"], "completion": r["response"]})
    rows = rows[:n]
    text.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    dm = InstructionDataModule(train_files=str(text), template="raw", tokenizer=a.model, max_length=a.max_length)
    from lightning_post.records.instruction import load_instruction_records

    examples = dm.encode(load_instruction_records([text]), "bench")
    if len(examples) != len(rows):
        sys.exit("an SFT example was dropped; the two frameworks would not see the same data")
    ids = work / "sft-ids.jsonl"
    ids.write_text("".join(json.dumps({"input_ids": e.input_ids,
                                       "completion_mask": [int(x != -100) for x in e.labels]}) + "\n"
                           for e in examples))
    return text, ids


def prepare_pairs(a, work: Path, n: int) -> Path:
    """The first HH-RLHF pairs whose both sides fit in ``max_length`` tokens, as prompt/chosen/rejected."""
    from lightning_post.records.preference import normalize_preference_record
    from lightning_post.records.files import DataError
    from lightning_post.models.loading import load_tokenizer

    tok = load_tokenizer(a.model)
    out = work / f"pairs-{n}-{a.max_length}.jsonl"
    rows = []
    hh = Path(a.data_dir) / HH
    with gzip.open(hh, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            try:
                pair = normalize_preference_record(json.loads(line), f"{hh}:{i}")
            except DataError:
                continue
            if pair["chosen"].strip() == pair["rejected"].strip():
                continue
            longest = max(len(tok(pair["raw_prompt"] + pair[k])["input_ids"]) for k in ("chosen", "rejected"))
            if longest + 1 <= a.max_length:  # + EOS
                rows.append({"prompt": pair["raw_prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]})
            if len(rows) == n:
                break
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def random_model(config_dir: str, work: Path) -> str:
    """SmolLM2-135M's architecture with seeded random weights (for machines the real weights cannot reach)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = work / "random-model"
    if not (out / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
        model.save_pretrained(out)
        for f in Path(config_dir).iterdir():
            if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
                shutil.copy(f, out / f.name)
    return str(out)


def matmul_limit(device: str, precision: str, threads: int) -> float:
    """Measured matmul rate (GFLOP/s): median of timed products after warm-up."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    n = 2048 if device == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(n, n, device=device, dtype=dtype)
    y = torch.randn(n, n, device=device, dtype=dtype)
    rates = []
    for i in range(13):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (x @ y).sum().item()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


# ---- driver ------------------------------------------------------------------------------------------------------
def launch(python: str, framework: str, task: str, a, data: Path) -> dict:
    cmd = [python, __file__, "--worker", framework, "--task", task, "--data", str(data), "--model", a.model,
           "--steps", str(a.steps), "--batch-size", str(a.batch[task]), "--max-length", str(a.max_length),
           "--lr", str(a.lr), "--threads", str(a.threads), "--seed", str(a.seed), "--device", a.device,
           "--precision", a.precision, "--work", str(a.work), "--ours-options", json.dumps(a.options[task])]
    if a.profile and framework == "ours":
        cmd.append("--profile")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{framework} {task} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.time() - start
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["ours", "trl"])
    ap.add_argument("--task", choices=["sft", "dpo"])
    ap.add_argument("--data")
    ap.add_argument("--work", default=str(ROOT / "mlruns" / "bench-vs-trl"))
    ap.add_argument("--model", default=None, help="model folder; default: lightning-post's converted SmolLM2")
    ap.add_argument("--random-init", metavar="CONFIG_DIR",
                    help="build the model from this config folder with seeded random weights instead")
    ap.add_argument("--data-dir", default=str(SHARED), help="folder holding ../shared/data's files")
    ap.add_argument("--tasks", default="sft,dpo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sft-batch-size", type=int, default=8)
    ap.add_argument("--dpo-batch-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--trl-python", default=str(TRL_PY), help="Python with TRL 1.16 installed")
    ap.add_argument("--sft-options", default="{}", help="extra SFTModule arguments (JSON) for an ablation")
    ap.add_argument("--dpo-options", default="{}", help="extra DPOModule arguments (JSON) for an ablation")
    ap.add_argument("--ours-options", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--frameworks", default="ours,trl", help="`ours` alone for a profile or an ablation (no report)")
    ap.add_argument("--profile", action="store_true",
                    help="run lightning-post's workers under torch.profiler (slower) and save the op table")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "throughput" / "RESULTS.md"))
    a = ap.parse_args()
    if a.worker:
        result = (worker_ours if a.worker == "ours" else worker_trl)(a)
        result["peak_memory_gb"] = peak_memory_gb(a.device)
        print(json.dumps(result))
        return
    if "trl" in a.frameworks and not Path(a.trl_python).exists() and a.trl_python == str(TRL_PY):
        sys.exit("TRL is not installed: run `bash benchmarks/setup_trl.sh` first")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.random_init:
        a.model = random_model(a.random_init, work)
    elif a.model is None:
        from lightning_post.models.loading import resolve_model_path

        a.model = resolve_model_path("smollm2-135m-instruct")
    a.batch = {"sft": a.sft_batch_size, "dpo": a.dpo_batch_size}
    a.options = {"sft": json.loads(a.sft_options), "dpo": json.loads(a.dpo_options)}
    tasks = a.tasks.split(",")
    data = {}
    if "sft" in tasks:
        text, ids = prepare_sft(a, work, a.batch["sft"] * a.steps)
        data["sft"] = {"ours": text, "trl": ids}
    if "dpo" in tasks:
        pairs = prepare_pairs(a, work, a.batch["dpo"] * a.steps)
        data["dpo"] = {"ours": pairs, "trl": pairs}
    limits = [matmul_limit(a.device, a.precision, a.threads)]
    print(f"matmul limit: {limits[0]:.1f} GFLOP/s", flush=True)
    runs: dict = {t: {"ours": [], "trl": []} for t in tasks}
    for r in range(a.rounds):
        for task in tasks:
            for fw, python in (("ours", sys.executable), ("trl", a.trl_python)):
                if fw not in a.frameworks.split(","):
                    continue
                res = launch(python, fw, task, a, data[task][fw])
                runs[task][fw].append(res)
                print(f"round {r + 1} {task} {fw}: {summarise(res, task, a)}", flush=True)
    limits.append(matmul_limit(a.device, a.precision, a.threads))
    if a.frameworks != "ours,trl":  # a profile or ablation of one side: no side-by-side report
        return
    command = " ".join(["python", os.path.relpath(sys.argv[0], ROOT) if Path(sys.argv[0]).is_absolute()
                        else sys.argv[0], *sys.argv[1:]])
    report(runs, a, limits, command)


def summarise(res: dict, task: str, a) -> str:
    t = sum(res["times"][1:])
    if task == "sft":
        return f"{sum(res['tokens'][1:]) / t:.1f} real tokens/s, peak {res['peak_memory_gb']:.2f} GB" \
            if "tokens" in res else f"{t / (len(res['times']) - 1):.2f} s/step, peak {res['peak_memory_gb']:.2f} GB"
    return f"{a.batch[task] * (len(res['times']) - 1) / t:.3f} pairs/s, peak {res['peak_memory_gb']:.2f} GB"


def report(runs: dict, a, limits: list[float], command: str) -> None:
    import torch

    from lightning_post.models.loading import load_causal_lm

    n_params = sum(p.numel() for p in load_causal_lm(a.model).parameters())
    limit = statistics.mean(limits)
    if a.device == "cuda":
        machine = f"{torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores"
    else:
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores ({a.threads} threads), no GPU"
    lines = [
        "# lightning-post vs TRL 1.16 on the same machine",
        "",
        f"- Machine: {machine}; torch {torch.__version__}; {platform.platform()}",
        f"- Command: `{command}` (TRL in its own venv: `bash benchmarks/setup_trl.sh`)",
        f"- Model: {'SmolLM2-135M architecture, seeded random weights' if a.random_init else 'SmolLM2-135M-Instruct'}"
        f" ({n_params / 1e6:.1f}M parameters), {'bf16 autocast' if a.precision == 'bf16' else 'fp32'}, LoRA r=16 "
        "alpha=32 dropout=0 on every linear layer, AdamW constant lr, clip 1.0, no gradient checkpointing, seed 0.",
        f"- {a.steps} steps per run, {a.rounds} rounds alternating the frameworks; throughput over steps 2..N.",
        f"- Measured limit: {'bf16 8192³' if a.device == 'cuda' else 'fp32 2048³'} matmul "
        f"{limits[0]:.1f} GFLOP/s before the runs, {limits[1]:.1f} after (MFU uses the mean, {limit:.1f}).",
        f"- lightning-post options: SFT {json.dumps(a.options.get('sft', {}))}, DPO "
        f"{json.dumps(a.options.get('dpo', {}))} (on top of the defaults).",
        "",
    ]
    for task in runs:
        ours, trl = runs[task]["ours"], runs[task]["trl"]
        flops_per_token = (4 if task == "sft" else 6) * n_params
        steps = len(ours[0]["tokens"]) - 1
        tokens = sum(ours[0]["tokens"][1:])  # same examples in both frameworks

        def rate(res):
            t = sum(res["times"][1:])
            return tokens / t if task == "sft" else a.batch[task] * steps / t

        unit = "real tokens/s" if task == "sft" else "pairs/s"
        title = ("SFT (Self-Instruct instructions, text-davinci-003 answers, batch 8)" if task == "sft"
                 else "DPO (HH-RLHF harmless pairs, batch 4 pairs, beta 0.1)")
        first = "" if task == "sft" else f" {unit} |"
        lines += [f"## {title}", "", f"| framework | round |{first} real tokens/s | MFU | mean step s | "
                  f"peak {'GPU' if a.device == 'cuda' else 'RSS'} GB | wall s (incl. load) |",
                  "|---|---|---|---|---|---|---|" + ("" if task == "sft" else "---|")]
        for name, results in (("lightning-post", ours), ("TRL 1.16", trl)):
            for i, res in enumerate(results, start=1):
                t = sum(res["times"][1:])
                tps = tokens / t
                mfu = tps * flops_per_token / (limit * 1e9)
                first = "" if task == "sft" else f" {rate(res):.3f} |"
                lines.append(f"| {name} | {i} |{first} {tps:.1f} | {mfu:.1%} | {t / steps:.2f} | "
                             f"{res['peak_memory_gb']:.2f} | {res['wall_s']:.0f} |")
        mean_ours = statistics.mean(rate(r) for r in ours)
        mean_trl = statistics.mean(rate(r) for r in trl)
        mem_ratio = max(r["peak_memory_gb"] for r in ours) / max(r["peak_memory_gb"] for r in trl)
        mfus = [tokens / sum(r["times"][1:]) * flops_per_token / (limit * 1e9) for r in ours]
        lines += ["", f"MFU = real tokens/s × {flops_per_token // n_params} × {n_params / 1e6:.1f}M / measured limit.", "",
                  f"**{task.upper()}: lightning-post / TRL = {mean_ours / mean_trl:.2f}× {unit}**; peak memory "
                  f"ratio {mem_ratio:.2f}; lightning-post MFU {statistics.mean(mfus):.1%} (mean of the rounds: "
                  f"{', '.join(f'{m:.1%}' for m in mfus)}).",
                  "", "Losses of the first steps (round 1):", "",
                  "| step | " + " | ".join(str(i + 1) for i in range(len(ours[0]["losses"]))) + " |",
                  "|---|" + "---|" * len(ours[0]["losses"]),
                  "| lightning-post | " + " | ".join(f"{x:.4f}" for x in ours[0]["losses"]) + " |",
                  "| TRL 1.16 | " + " | ".join(f"{x:.4f}" for x in trl[0]["losses"]) + " |", ""]
        diff = max(abs(x - y) for x, y in zip(ours[0]["losses"], trl[0]["losses"]))
        lines += [f"Largest loss difference: {diff:.2e}. Real tokens per step (both): "
                  f"{', '.join(str(x) for x in ours[0]['tokens'])}.", ""]
    Path(a.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
