"""GPU checks of every method on the tiny model: one GPU (fp32 and bf16-mixed), FSDP2 and DeepSpeed, against the CPU.

Run on a machine with a GPU (the tiny model must be in $LIGHTNING_POST_CACHE):

    python scripts/device_check.py [--out results.json]

For each case it prints one JSON line: method, strategy, precision, the first losses, and for DPO whether step 0
is log 2; a case that raises is reported with the end of its traceback and the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import traceback

import lightning as L
import torch

from lightning_post import (DPOModule, InstructionDataModule, PeftSettings, PreferenceDataModule, RewardModule,
                            SFTModule)
from lightning_post.optim import OptimSettings

LORA = PeftSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def fit(cls, accelerator, strategy, precision, peft=LORA, steps=3, attn="sdpa_varlen"):
    metrics = []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            metrics.append({k: round(v.item(), 6) for k, v in trainer.callback_metrics.items() if k.startswith("train/")
                            and "per_sec" not in k})

    L.seed_everything(0)
    module = cls("tiny-llama", peft=peft, optim=OptimSettings(name="sgd", lr=0.5), gradient_clip_val=None,
                 micro_batch_size=None if type(strategy).__name__ == "DeepSpeedStrategy" else 2, attn_implementation=attn)
    if cls is SFTModule:
        data = InstructionDataModule(tokenizer="tiny-llama", max_length=128, batch_size=4, shuffle=False, val_fraction=0.1)
    else:
        data = PreferenceDataModule(tokenizer="tiny-llama", max_length=128, min_prompt_length=32, batch_size=4,
                                    shuffle=False)
    trainer = L.Trainer(accelerator=accelerator, devices=1, strategy=strategy, precision=precision, max_steps=steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_model_summary=False, callbacks=[Rec()])
    trainer.fit(module, data)
    return [m["train/loss"] for m in metrics], [m["train/grad_norm"] for m in metrics]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--cpu", action="store_true", help="run the single-device cases on the CPU instead")
    args = ap.parse_args()
    def fsdp():  # a strategy object belongs to one Trainer: a new one per case
        from lightning_post.strategies import FSDP2Strategy

        return FSDP2Strategy()

    def deepspeed():
        return L.pytorch.strategies.DeepSpeedStrategy(stage=2)

    cases = []
    for cls in (SFTModule, RewardModule, DPOModule):
        cases += [(cls, "gpu", "auto", "32-true", LORA, "sdpa"), (cls, "gpu", "auto", "32-true", LORA, "sdpa_varlen"),
                  (cls, "gpu", fsdp, "bf16-mixed", LORA, "sdpa_varlen"),
                  (cls, "gpu", deepspeed, "bf16-mixed", LORA, "sdpa_varlen")]
    cases += [(SFTModule, "gpu", fsdp, "bf16-mixed", None, "sdpa_varlen"),
              (SFTModule, "gpu", deepspeed, "bf16-mixed", None, "sdpa_varlen"),
              (DPOModule, "gpu", "auto", "32-true", None, "sdpa_varlen")]
    if args.cpu:  # the CPU rows to compare with (run where the GPU rows ran, or here)
        cases = [(c, "cpu", "auto", "32-true", p, a) for c, _, s_, _, p, a in cases if s_ == "auto"]
    results = []
    for cls, acc, strategy, precision, peft, attn in cases:
        if acc == "gpu" and not torch.cuda.is_available():
            continue
        name = strategy if isinstance(strategy, str) else strategy.__name__
        row = {"method": cls.method, "accelerator": acc, "strategy": name, "precision": precision,
               "peft": "lora" if peft else "full", "attention": attn}
        try:
            losses, norms = fit(cls, acc, strategy if isinstance(strategy, str) else strategy(), precision, peft,
                                attn=attn)
            row["losses"], row["grad_norms"] = losses, norms
            if cls is DPOModule:
                row["step0_is_log2"] = abs(losses[0] - math.log(2)) < 1e-5
        except Exception as e:  # report and go on with the other cases
            row["error"] = f"{type(e).__name__}: {e}"[:400]
            row["traceback"] = traceback.format_exc()[-1500:]
        print(json.dumps(row), flush=True)
        results.append(row)
        if args.out:  # after every case, so a run stopped by a time limit keeps what it did
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    if torch.cuda.is_available():
        print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
