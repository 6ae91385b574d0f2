"""The speed paths compute the same maths as the plain ones: padding-free attention, the chunked linear
cross-entropy and the fused LoRA forward; and the strategy checks."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_post import DPOModule, PeftSettings, SFTModule
from lightning_post.data.collate import collate_rows
from lightning_post.records.tokenize import IGNORE_INDEX, Tokenized
from lightning_post.losses.sft import linear_cross_entropy
from lightning_post.models.attention import repad, unpad

LORA = dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear")


# ---- linear cross-entropy ----------------------------------------------------------------------------------------
def test_linear_cross_entropy_by_hand():
    """H = 1, V = 2, weight [[1], [0]]: logits (h, 0). For h = ln 3 and target 0, p = 3/4, loss = ln(4/3) and
    d loss / d h = p - 1 = -1/4; target 1 gives ln 4 and +3/4. Zero hidden states give ln V."""
    h = torch.tensor([[math.log(3.0)], [math.log(3.0)]], requires_grad=True)
    w = torch.tensor([[1.0], [0.0]])
    losses, predictions = linear_cross_entropy(h, w, torch.tensor([0, 1]), chunk_size=1)
    assert losses.tolist() == pytest.approx([math.log(4 / 3), math.log(4.0)], abs=1e-6)
    assert predictions.tolist() == [0, 0]
    losses.sum().backward()
    assert h.grad[:, 0].tolist() == pytest.approx([-0.25, 0.75], abs=1e-6)
    zero, _ = linear_cross_entropy(torch.zeros(3, 4), torch.randn(7, 4), torch.tensor([0, 3, 6]))
    assert zero.tolist() == pytest.approx([math.log(7)] * 3, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_linear_cross_entropy_equals_full_logits(chunk):
    """Any chunking gives F.cross_entropy of the full logits, the arg-max, and the hidden states' gradient under
    unequal per-token weights (the backward multiplies by the incoming gradient)."""
    torch.manual_seed(0)
    h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64)
    t = torch.randint(0, 11, (13,))
    scale = torch.arange(1.0, 14.0, dtype=torch.float64)
    ref = F.cross_entropy(h @ w.t(), t, reduction="none")
    (ref * scale).sum().backward()
    ref_grad, h.grad = h.grad.clone(), None
    losses, predictions = linear_cross_entropy(h, w, t, chunk_size=chunk)
    (losses * scale).sum().backward()
    assert torch.allclose(losses.double(), ref, atol=1e-6)
    assert torch.equal(predictions, (h @ w.t()).argmax(-1))
    assert torch.allclose(h.grad, ref_grad, atol=1e-6)


def test_linear_cross_entropy_trains_a_trainable_head():
    """A head that needs a gradient gets it (full logits then)."""
    h, w = torch.randn(4, 3), torch.randn(5, 3, requires_grad=True)
    losses, _ = linear_cross_entropy(h, w, torch.tensor([0, 1, 2, 3]))
    losses.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


# ---- padding-free ------------------------------------------------------------------------------------------------
def _examples(lengths, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        prompt = n // 2
        out.append(Tokenized(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def test_unpad_repad_round_trip():
    ex = _examples([5, 3, 2])
    batch = collate_rows([[ex[0]], [ex[1], ex[2]]], pad_id=0)  # row 2 packs two sequences
    flat = unpad(batch)
    assert flat["input_ids"].shape == (1, 10)
    assert flat["cu_seqlens"].tolist() == [0, 5, 8, 10]
    assert flat["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]
    hidden = torch.arange(10.0)[None, :, None]  # (1, N, 1)
    back = repad(hidden, flat["keep"])
    assert back[:, :, 0].tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def _module(cls, attn, **kw):
    torch.manual_seed(0)
    m = cls("tiny-llama", attn_implementation=attn, peft=PeftSettings(**LORA), **kw)
    m.configure_model()
    return m


def _perturb_adapters(*modules):
    """LoRA B starts at zero; give every module the same non-zero adapters so they matter."""
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=g) * 0.1 if "lora_B" in k else v)
             for k, v in modules[0].state_dict().items()}
    for m in modules:
        m.load_state_dict(state)


def test_padding_free_sft_equals_padded_and_packed():
    """Loss and adapter gradients of padded rows (sdpa), packed rows (sdpa, 4D mask) and padding-free rows
    (sdpa_varlen) agree."""
    ex = _examples([7, 12, 3, 9, 5])
    results = []
    for attn, rows in (("sdpa", [[e] for e in ex]), ("sdpa", [ex[:2], ex[2:]]), ("sdpa_varlen", [[e] for e in ex]),
                       ("sdpa_varlen", [ex[:2], ex[2:]])):
        m = _module(SFTModule, attn)
        if not results:
            reference = m
        _perturb_adapters(reference, m)
        out = m.micro_step(collate_rows(rows, pad_id=0))
        out["loss_sum"].backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((out["loss_sum"].item(), grads))
    loss0, grads0 = results[0]
    assert len(grads0) > 0
    for loss, grads in results[1:]:
        assert loss == pytest.approx(loss0, rel=1e-5)
        for n in grads0:
            assert torch.allclose(grads[n], grads0[n], atol=1e-5, rtol=1e-4), n


def test_padding_free_dpo_log_probs_equal_padded():
    from lightning_post.data.collate import collate_pairs
    from lightning_post.records.tokenize import PairExample

    ex = _examples([6, 11, 4, 9])
    pairs = [PairExample(chosen=ex[0], rejected=ex[1], index=0), PairExample(chosen=ex[2], rejected=ex[3], index=1)]
    batch = collate_pairs(pairs, pad_id=0)
    padded, free = _module(DPOModule, "sdpa"), _module(DPOModule, "sdpa_varlen")
    _perturb_adapters(padded, free)
    for a, b in zip(padded.reply_logps(batch), free.reply_logps(batch)):
        assert torch.allclose(a, b, atol=1e-5)


def test_padding_free_training_matches_padded(tmp_path):
    """Three SGD steps of SFT: padded and padding-free give the same losses."""
    from lightning_post import InstructionDataModule
    from lightning_post.optim import OptimSettings

    losses = {}
    for attn in ("sdpa", "sdpa_varlen"):
        seen = []

        class Rec(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                seen.append(trainer.callback_metrics["train/loss"].item())

        L.seed_everything(0)
        module = SFTModule("tiny-llama", attn_implementation=attn, peft=PeftSettings(**LORA),
                           optim=OptimSettings(name="sgd", lr=0.5), micro_batch_size=3)
        data = InstructionDataModule(tokenizer="tiny-llama", max_length=96, batch_size=6, shuffle=False)
        trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, callbacks=[Rec()], default_root_dir=tmp_path)
        trainer.fit(module, data)
        losses[attn] = seen
    assert len(losses["sdpa"]) == 3
    assert losses["sdpa_varlen"] == pytest.approx(losses["sdpa"], rel=1e-5)


def test_generation_with_sdpa_varlen_equals_sdpa():
    """Without cu_seqlens (generation, left padding) sdpa_varlen is plain sdpa."""
    a, b = _module(SFTModule, "sdpa"), _module(SFTModule, "sdpa_varlen")
    _perturb_adapters(a, b)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    assert a.generate_from_ids(prompts, max_new_tokens=6) == b.generate_from_ids(prompts, max_new_tokens=6)


# ---- fused LoRA --------------------------------------------------------------------------------------------------
def test_fused_lora_forward_equals_peft():
    """Outputs and gradients of the fused forward equal PEFT's; with adapters disabled both are the base."""
    from lightning_post.models.peft import disable_adapters

    torch.manual_seed(0)
    fused = SFTModule("tiny-llama", peft=PeftSettings(**LORA, fused=True))
    fused.configure_model()
    plain = SFTModule("tiny-llama", peft=PeftSettings(**LORA, fused=False))
    plain.configure_model()
    _perturb_adapters(fused, plain)
    ex = _examples([8, 5])
    batch = collate_rows([[e] for e in ex], pad_id=0)
    outs = []
    for m in (fused, plain):
        out = m.micro_step(batch)
        out["loss_sum"].backward()
        outs.append((out["loss_sum"].item(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-6)
    # every adapter got a gradient in both: 2 layers x 7 linear layers (q, k, v, o, gate, up, down) x lora_A/lora_B
    assert outs[0][1].keys() == outs[1][1].keys() and len(outs[1][1]) == 2 * 7 * 2
    for n, g in outs[1][1].items():
        assert torch.allclose(outs[0][1][n], g, atol=1e-6), n
    with torch.no_grad(), disable_adapters(fused.model), disable_adapters(plain.model):
        assert fused.micro_step(batch)["loss_sum"].item() == pytest.approx(plain.micro_step(batch)["loss_sum"].item(),
                                                                          rel=1e-6)
    changed = sum(1 for mod in fused.model.modules() if "forward" in vars(mod))
    assert changed == sum(1 for n, _ in fused.model.named_modules() if n.endswith(("_proj",)) and "lora" not in n
                          and "base_layer" not in n)


# ---- strategies --------------------------------------------------------------------------------------------------
def test_fsdp_is_refused_and_deepspeed_gets_the_clip_value():
    """Lightning's FSDP1 cannot run the manual backward (Lightning #19685): configure_model stops with a message
    naming FSDP2Strategy and its overlay. Under DeepSpeed the module's gradient_clip_val goes into the engine's
    config."""
    from types import SimpleNamespace

    class FSDPStrategy:  # stands for Lightning's (which refuses to exist without a GPU)
        pass

    class DeepSpeedStrategy:
        config = {"zero_optimization": {"stage": 2}}

    module = SFTModule("tiny-llama", peft=PeftSettings(**LORA), gradient_clip_val=0.5)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    refusal = r"FSDPStrategy \(FSDP1\) cannot train.*#19685.*FSDP2Strategy: configs/strategies/fsdp.yaml"
    with pytest.raises(ValueError, match=refusal):
        module.configure_model()
    assert module.model is None
    ds = DeepSpeedStrategy()
    module._trainer = SimpleNamespace(strategy=ds)
    module.configure_model()
    assert ds.config["gradient_clipping"] == 0.5


def test_padding_free_rewards_equal_transformers_scoring():
    """The reward model's padding-free scores equal transformers' own sequence-classification forward (padded,
    last non-pad token), rows of different lengths and a pair batch alike; and so do their gradients."""
    from lightning_post import RewardModule
    from lightning_post.data.collate import collate_pairs
    from lightning_post.records.tokenize import PairExample

    ex = _examples([6, 11, 4, 9])
    padded, free = _module(RewardModule, "sdpa"), _module(RewardModule, "sdpa_varlen")
    pad = padded.model.config.pad_token_id  # the collators pad with the tokenizer's pad id, the model's
    batch = collate_pairs([PairExample(chosen=ex[0], rejected=ex[1], index=0),
                           PairExample(chosen=ex[2], rejected=ex[3], index=1)], pad_id=pad)
    g = torch.Generator().manual_seed(2)
    state = {k: (torch.randn(v.shape, generator=g) * 0.1 if ("lora_B" in k or "score" in k) else v)
             for k, v in padded.state_dict().items()}
    padded.load_state_dict(state)
    free.load_state_dict(state)
    a, b = padded.rewards(batch), free.rewards(batch)
    assert a.abs().max() > 0
    assert torch.allclose(a, b, atol=1e-5)
    (a * torch.arange(1.0, 5.0)).sum().backward()
    (b * torch.arange(1.0, 5.0)).sum().backward()
    grads = {n: p.grad for n, p in free.named_parameters() if p.grad is not None}
    for n, p in padded.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[n], atol=1e-5), n


def test_fused_lora_forward_keeps_peft_for_lora_biases():
    """With ``lora_bias`` the adapter's B has a bias that the fused product would drop (0.69 off on this layer before
    the guard): such layers keep PEFT's own forward, so the output equals PEFT's."""
    from peft import LoraConfig, get_peft_model

    from lightning_post.models.peft import fuse_lora_forward

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5))
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, target_modules=["0"], lora_bias=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 1.0)
    x = torch.randn(3, 6)
    want = model(x)
    fuse_lora_forward(model)
    torch.testing.assert_close(model(x), want)
