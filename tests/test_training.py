"""Training invariances on a tiny model: accumulation, packing, resume, gradient checkpointing."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_post import InstructionDataModule, PeftSettings, SFTModule
from lightning_post.optim import OptimSettings


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(trainer.callback_metrics["train/loss"].item())


def make_data(path, tok, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("template", "basic")
    return InstructionDataModule(train_files=str(path), val_fraction=0.0, tokenizer=tok, max_length=64, **kw)


def trainer(max_steps, callbacks=(), **kw):
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
        enable_checkpointing=kw.pop("enable_checkpointing", False), **kw,
    )


def test_accumulation_1x8_equals_8x1(tiny_path, small_jsonl):
    """One optimizer step over 8 rows: a single micro-batch of 8 and 8 micro-batches of 1 give the same loss and,
    with SGD (whose update is proportional to the gradient), the same weights. Responses have 1-16 words, so a
    per-micro-batch mean would weight tokens differently and fail this test."""
    results = []
    for micro in (8, 1):
        L.seed_everything(0)
        module = SFTModule(tiny_path, optim=OptimSettings(name="sgd", lr=1.0), micro_batch_size=micro,
                           gradient_clip_val=None)
        rec = LossRecorder()
        trainer(1, [rec]).fit(module, make_data(small_jsonl, tiny_path, shuffle=False))
        results.append((rec.losses, {k: v.clone() for k, v in module.model.state_dict().items()}))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    fresh = SFTModule(tiny_path)
    fresh.configure_model()
    before = fresh.model.state_dict()
    changed = 0
    for name in w_a:
        assert torch.allclose(w_a[name], w_b[name], atol=1e-5, rtol=0), name
        changed += not torch.allclose(w_a[name], before[name], atol=1e-4)
    assert changed > 10  # the step really moved the weights


def test_packed_equals_unpacked_per_example(tiny_path, small_jsonl):
    """Packing several examples in one row changes nothing for each example's token losses (4D segment mask);
    restarted position ids alone would let later examples attend to earlier ones."""
    from lightning_post.losses.sft import token_cross_entropy

    L.seed_everything(0)
    module = SFTModule(tiny_path)
    module.configure_model()
    module.eval()

    def token_losses(packing: bool, isolate: bool = True):
        data = make_data(small_jsonl, tiny_path, packing=packing, shuffle=False, batch_size=64)
        data.setup("fit")
        rows = data.splits["train"].rows
        batch = data.collate(rows)
        if not isolate:
            batch["segment_ids"] = batch["attention_mask"].clone()  # only position ids restart
        with torch.no_grad():
            logits, targets = module.response_logits(batch)
        return token_cross_entropy(logits, targets), len(rows)

    unpacked, n_unpacked = token_losses(False)
    packed, n_packed = token_losses(True)
    assert n_packed < n_unpacked  # rows really were packed
    assert torch.allclose(packed, unpacked, atol=1e-5)
    leaky, _ = token_losses(True, isolate=False)
    assert not torch.allclose(leaky, unpacked, atol=1e-3)


@pytest.mark.parametrize("peft", [None, PeftSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])])
def test_resume_equals_continuous(tiny_path, small_jsonl, tmp_path, peft):
    """Stop after 3 steps (mid-epoch: 16 rows at batch 2 make 8 steps per epoch), resume from the checkpoint:
    steps 4-10 (crossing the epoch boundary) have the same losses as an uninterrupted run. With LoRA the checkpoint
    holds only the adapters, and dropout's random state is restored."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StopAt(L.Callback):  # an interruption: the run is configured for 10 steps
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step == 3

    def run(ckpt_path=None, interrupt=False):
        L.seed_everything(0)
        module = SFTModule(tiny_path, peft=peft, optim=OptimSettings(lr=0.01, warmup_steps=2))
        rec = LossRecorder()
        cbs = [rec]
        if interrupt:
            cbs += [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1), StopAt()]
        data = make_data(small_jsonl, tiny_path, batch_size=2)
        trainer(10, cbs, enable_checkpointing=interrupt).fit(module, data, ckpt_path=ckpt_path)
        return rec.losses

    continuous = run()
    first = run(interrupt=True)
    ckpt = next((tmp_path / "ckpt").glob("*step=3.ckpt"))
    resumed = run(ckpt_path=str(ckpt))
    assert first == pytest.approx(continuous[:3], abs=1e-6)
    assert resumed == pytest.approx(continuous[3:], abs=1e-5)
    if peft is not None:
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        assert state and all("lora_" in k for k in state)


def test_gradient_checkpointing_same_loss_and_gradients(tiny_path, small_jsonl):
    grads = []
    for gc in (False, True):
        L.seed_everything(0)
        module = SFTModule(tiny_path, gradient_checkpointing=gc)
        module.configure_model()
        assert module.model.is_gradient_checkpointing == gc and module.model.training
        data = make_data(small_jsonl, tiny_path, shuffle=False)
        data.setup("fit")
        batch = data.collate(data.splits["train"].rows[:4])
        out = module.micro_step(batch)
        out["loss_sum"].backward()
        grads.append((out["loss_sum"].item(), [p.grad.clone() for p in module.model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-5)


def test_loss_equals_transformers_own_shifted_loss(tiny_path, small_jsonl):
    """Our response-only loss (logits only at response positions) equals transformers' causal-LM loss, which
    shifts labels itself and averages over every non-ignored label."""
    L.seed_everything(0)
    module = SFTModule(tiny_path)
    module.configure_model()
    data = make_data(small_jsonl, tiny_path, shuffle=False)
    data.setup("fit")
    batch = data.collate(data.splits["train"].rows[:5])
    with torch.no_grad():
        ours = module.micro_step(batch)["loss_sum"] / module.loss_units(batch)
        theirs = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"]).loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
