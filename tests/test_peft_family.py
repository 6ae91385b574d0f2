"""The PEFT family on the tiny model: LoRA, DoRA, IA3, prefix tuning (PEFT) and our bottleneck adapter each train
with the loss falling, count their trainable parameters, save, reload to identical outputs, and export; QLoRA stops
with a clear error on a machine without CUDA."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_post.methods.sft import SFTModule
from lightning_post.models.peft import PeftSettings, add_bottleneck_adapters, count_parameters
from lightning_post.optim import OptimSettings
from tests.test_training import LossRecorder, make_data, trainer

METHODS = {
    "lora": PeftSettings(method="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
    "dora": PeftSettings(method="dora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
    "ia3": PeftSettings(method="ia3", target_modules=["k_proj", "v_proj", "down_proj"]),
    "prefix": PeftSettings(method="prefix", num_virtual_tokens=4),
    "bottleneck": PeftSettings(method="bottleneck", bottleneck_size=8),
}


#: Adam learning rates at which each method's loss on one repeated batch falls steadily on the tiny model
LR = {"ia3": 0.05, "prefix": 0.05, "bottleneck": 0.003}


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_saves_reloads_and_exports(name, tiny_path, small_jsonl, tmp_path):
    from lightning_post.callbacks.export import export_model
    from lightning_post.models.loading import load_causal_lm

    L.seed_everything(0)
    lr = LR.get(name, 0.01)
    module = SFTModule(tiny_path, peft=METHODS[name], optim=OptimSettings(lr=lr, warmup_steps=0),
                       gradient_clip_val=None)
    rec = LossRecorder()
    data = make_data(small_jsonl, tiny_path, batch_size=16, shuffle=False)
    trainer(10, [rec]).fit(module, data)
    assert rec.losses[-1] < rec.losses[0] - 0.03, rec.losses  # the same batch each step: the loss falls
    trainable, total = count_parameters(module.model)
    assert 0 < trainable < total / 10
    if name == "bottleneck":  # 2 layers x (down: 64*8 + 8, up: 8*64 + 64)
        hidden = module.model.config.hidden_size
        assert trainable == module.model.config.num_hidden_layers * (2 * hidden * 8 + 8 + hidden)

    data.setup("fit")
    batch = data.collate(data.splits["train"].rows[:4])
    module.model.eval()
    before = _logits(module.model, batch)
    prompt = data.encode_prompt("Repeat the word cat 2 times.")
    assert isinstance(module.generate_from_ids([prompt, prompt[3:]], 3)[0], str)  # generation works with it
    written = export_model(module, tmp_path / "export")
    if name == "bottleneck":
        reloaded = load_causal_lm(written["adapter"])  # base + adapters from the saved folder
    else:
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(load_causal_lm(tiny_path), written["adapter"])
    assert torch.allclose(_logits(reloaded.eval(), batch), before, atol=1e-5)
    if name in ("lora", "dora", "ia3"):  # mergeable: the exported full model gives the same outputs
        assert torch.allclose(_logits(load_causal_lm(written["model"]).eval(), batch), before, atol=1e-4)
    else:
        assert "model" not in written
    base = load_causal_lm(tiny_path).eval()
    assert not torch.allclose(_logits(base, batch), before, atol=1e-3)  # training really changed the outputs


def test_bottleneck_starts_as_the_identity_and_can_be_bypassed(tiny_path, small_jsonl):
    from lightning_post.models.loading import load_causal_lm
    from lightning_post.models.peft import disable_adapters

    data = make_data(small_jsonl, tiny_path)
    data.setup("fit")
    batch = data.collate(data.splits["train"].rows[:2])
    base = load_causal_lm(tiny_path).eval()
    adapted = add_bottleneck_adapters(load_causal_lm(tiny_path), 8).eval()
    assert torch.allclose(_logits(adapted, batch), _logits(base, batch), atol=1e-6)  # up-projection starts at 0
    for p in adapted.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.5)
    assert not torch.allclose(_logits(adapted, batch), _logits(base, batch), atol=1e-3)
    with disable_adapters(adapted):  # what DPO's reference model sees
        assert torch.allclose(_logits(adapted, batch), _logits(base, batch), atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error only")
def test_qlora_names_the_missing_gpu(tiny_path):
    module = SFTModule(tiny_path, peft=PeftSettings(method="qlora"))
    with pytest.raises(ValueError, match="qlora needs a CUDA GPU"):
        module.configure_model()


def test_every_method_is_accepted_by_the_preference_modules(tiny_path):
    """The same ``peft:`` block configures DPO and the reward model (bottleneck: causal LMs only, said plainly)."""
    from lightning_post.methods.dpo import DPOModule
    from lightning_post.methods.reward import RewardModule

    for name in ("dora", "ia3", "prefix", "bottleneck"):
        dpo = DPOModule(tiny_path, peft=METHODS[name])
        dpo.configure_model()
        assert 0 < count_parameters(dpo.model)[0]
    reward = RewardModule(tiny_path, peft=METHODS["dora"])
    reward.configure_model()
    with pytest.raises(ValueError, match="bottleneck adapts causal LMs"):
        RewardModule(tiny_path, peft=METHODS["bottleneck"]).configure_model()
