"""TRL's GRPOTrainer on the arithmetic task, with the settings of configs/ppo/grpo_arithmetic.yaml (runs in
benchmarks/.trl-venv; see grpo_arithmetic.py, which launches it).

Same model (the converted SmolLM2-135M-Instruct folder), prompts (the chat template with the generation prompt),
reward functions (lightning-post's own ``exact_answer`` and ``format`` with weights 1.0 and 0.0 (logged only), imported from the
checkout), LoRA (r 16, alpha 32, all linear layers), group size (8), rollouts of 8 prompts, 32 new tokens,
temperature 1.0, top-p 1.0, no top-k, no gradient checkpointing (TRL's default is on), loss type, clipping, learning rate, constant schedule with warm-up, and
number of optimizer steps. Writes the merged model to ``OUT/model`` and a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # lightning_post.scoring.rewards: the very reward functions our runs use

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from lightning_post.scoring.rewards import exact_answer, format_reward  # noqa: E402

FORMAT = r"^\s*-?\d+\s*\.?\s*$"


def exact_answer_reward(completions, answer, **_):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return exact_answer(texts, [{"answer": a} for a in answer])


def format_only_number(completions, **_):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return format_reward(texts, pattern=FORMAT)


class StepTimes(TrainerCallback):
    """Wall time of each optimizer step (generation, scoring and update together)."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--loss_type", default="dapo")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro_batch", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--format_weight", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [json.loads(line) for line in Path(a.train).read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows])
    completions = a.prompts * a.group
    accumulate = completions // a.micro_batch
    config = GRPOConfig(
        output_dir=str(Path(a.out) / "trainer"), use_cpu=True, seed=0, max_steps=a.steps,
        per_device_train_batch_size=a.micro_batch, gradient_accumulation_steps=accumulate, steps_per_generation=accumulate,
        num_generations=a.group, max_completion_length=a.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, loss_type=a.loss_type, epsilon=0.2, epsilon_high=0.28, beta=0.0,
        scale_rewards="group", num_iterations=1, reward_weights=[1.0, a.format_weight], learning_rate=a.lr, weight_decay=0.0,
        lr_scheduler_type="constant_with_warmup", warmup_steps=2, max_grad_norm=1.0, logging_steps=1,
        report_to="none", save_strategy="no", bf16=False, fp16=False, disable_tqdm=True,
        gradient_checkpointing=False,  # TRL turns it on by default; ours is off (configs/ppo/grpo_arithmetic.yaml)
    )
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    times = StepTimes()
    trainer = GRPOTrainer(model=model, reward_funcs=[exact_answer_reward, format_only_number], args=config,
                          train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[times])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(Path(a.out) / "model")
    tok.save_pretrained(Path(a.out) / "model")
    logs = [h for h in trainer.state.log_history if "reward" in h]
    print(json.dumps({
        "framework": "trl", "steps": a.steps, "completions": completions * a.steps, "train_seconds": round(seconds, 1),
        "step_seconds": [round(t, 2) for t in times.times], "trainable": trainable,
        "train_exact_answer": [round(h.get("rewards/exact_answer_reward/mean", float("nan")), 4) for h in logs],
        "completion_length": [round(h.get("completions/mean_length", float("nan")), 2) for h in logs],
        "eos_rate": [round(1 - h.get("completions/clipped_ratio", float("nan")), 4) for h in logs],
    }))


if __name__ == "__main__":
    main()
