"""RewardModule and DPOModule on a tiny model: forward equivalences, reference model, exact step-0 values."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_post import DPOModule, PeftSettings, PreferenceDataModule, RewardModule
from lightning_post.data.collate import collate_pairs, collate_rows
from lightning_post.optim import OptimSettings
from tests.conftest import write_jsonl
from tests.test_training import LossRecorder, trainer

LORA = PeftSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def _pairs(weighted: bool) -> list[dict]:
    words = ["cat", "dog", "sun", "sky", "tree", "rain"]
    records = [
        {"prompt": f"Say {w} {n} times.", "chosen": " ".join([w] * n), "rejected": f"No, I will not say {w}."}
        for n, w in zip(range(1, 13), words * 2)
    ]
    if weighted:
        for n, r in enumerate(records, start=1):
            r.update(margin=n % 3, weight=1.0 + (n % 2))
    return records


@pytest.fixture
def pairs_jsonl(tmp_path):
    """Twelve pairs of varied length."""
    return write_jsonl(tmp_path / "pairs.jsonl", _pairs(False))


@pytest.fixture
def weighted_jsonl(tmp_path):
    """The same pairs with margins (0-2) and weights (1 or 2)."""
    return write_jsonl(tmp_path / "weighted.jsonl", _pairs(True))


def data(path, tok, **kw):
    kw.setdefault("batch_size", 4)
    return PreferenceDataModule(train_files=str(path), val_files=str(path), tokenizer=tok, template="basic",
                                max_length=64, min_prompt_length=8, shuffle=False, **kw)


def ready(module, dm):
    module.configure_model()
    dm.prepare_data()
    dm.setup("fit")
    return collate_pairs(dm.splits["train"].rows[:6], dm._tokenizer().pad_token_id)


def randomise_lora(module, seed=1):
    """LoRA B starts at zero (adapters change nothing); give them values so policy != reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def base_lm(path):
    """The starting weights as a plain transformers model (no PEFT, no padding-free attention): the reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def plain_logps(model, examples) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each example's labelled tokens and their count, ``(N,)`` each (float64): one
    forward of ``model`` per example alone (no batch, no padding), logits at t scoring token t + 1."""
    sums, counts = [], []
    for ex in examples:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]  # (T-1, V)
        targets = torch.tensor(ex.labels[1:])  # (T-1,)
        at = (targets != -100).nonzero()[:, 0]
        sums.append(torch.log_softmax(logits.double(), -1)[at, targets[at]].sum())
        counts.append(torch.tensor(len(at), dtype=torch.float64))
    return torch.stack(sums), torch.stack(counts)


def test_concatenated_forward_equals_two_separate_forwards(tiny_path, pairs_jsonl):
    module = DPOModule(tiny_path, peft=LORA)
    dm = data(pairs_jsonl, tiny_path)
    batch = ready(module, dm)
    randomise_lora(module)
    pairs = dm.splits["train"].rows[:6]
    pad = dm._tokenizer().pad_token_id
    with torch.no_grad():
        sums, counts = module.reply_logps(batch)
        c_sums, c_counts = module.reply_logps(collate_rows([[p.chosen] for p in pairs], pad))
        r_sums, r_counts = module.reply_logps(collate_rows([[p.rejected] for p in pairs], pad))
    assert torch.equal(counts, torch.cat([c_counts, r_counts]))
    torch.testing.assert_close(sums, torch.cat([c_sums, r_sums]), atol=1e-5, rtol=0)
    assert (sums < 0).all()


def test_lora_reference_equals_the_base_model(tiny_path, pairs_jsonl):
    """Adapters disabled == the model loaded without PEFT; and the trained adapters do change the policy."""
    module = DPOModule(tiny_path, peft=LORA)
    batch = ready(module, data(pairs_jsonl, tiny_path))
    randomise_lora(module)
    base = DPOModule(tiny_path)  # full fine-tuning module: its policy is the plain base model
    base.configure_model()
    with torch.no_grad():
        ref = module.reference_logps(batch)  # (2B,) [chosen; rejected]
        policy = module.reply_logps(batch)[0]
        plain = base.reply_logps(batch)[0]
        frozen = base.reference_logps(batch)  # the full-fine-tuning reference: a frozen copy
    torch.testing.assert_close(ref, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(frozen, plain, atol=1e-6, rtol=0)
    assert (policy - ref).abs().max() > 1e-2
    assert not any(p.requires_grad for p in base._frozen_reference[0].parameters())
    assert not any("_frozen_reference" in k for k in base.state_dict())


def _first_step(module, dm, **trainer_kw):
    rec = LossRecorder()
    keys = []

    class Keep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            keys.append({k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    trainer(trainer_kw.pop("max_steps", 1), [rec, Keep()], **trainer_kw).fit(module, dm)
    return rec.losses, keys


@pytest.mark.parametrize("peft", [LORA, None], ids=["lora", "full"])
def test_dpo_loss_is_exactly_log2_at_step_0(tiny_path, pairs_jsonl, peft):
    """Policy == reference at step 0 (LoRA B = 0, or a frozen copy): z = 0, loss = -log sigma(0) = log 2, both
    implicit rewards 0, so accuracy counts every pair as a tie (0.5) and the margin is 0."""
    L.seed_everything(0)
    module = DPOModule(tiny_path, peft=peft, optim=OptimSettings(lr=1e-3))
    losses, metrics = _first_step(module, data(pairs_jsonl, tiny_path))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    m = metrics[0]
    assert m["train/rewards/accuracies"] == 0.5
    assert m["train/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert m["train/rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert m["train/logps/chosen"] < 0 and m["train/logps/rejected"] < 0


def test_rpo_adds_the_chosen_mean_token_nll(tiny_path, weighted_jsonl):
    """With rpo_alpha = a, the step-0 loss of pair i is w_i log 2 + a (-log p(chosen_i) / chosen_i's tokens): policy ==
    reference, so the preference term is -log sigma(0) = log 2, scaled by the pair's weight w_i (1 or 2); the NLL
    term is not weighted. The NLL comes from one plain forward of the base model per chosen reply (LoRA B = 0 at
    step 0, so the policy is the base model)."""
    module = DPOModule(tiny_path, peft=LORA, rpo_alpha=0.5)
    dm = data(weighted_jsonl, tiny_path, batch_size=12)
    ready(module, dm)
    pairs = dm.splits["train"].rows
    with torch.no_grad():
        losses, _, _ = module.pair_losses(collate_pairs(pairs, dm._tokenizer().pad_token_id), "train")
    sums, counts = plain_logps(base_lm(tiny_path), [p.chosen for p in pairs])
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float64)
    assert len(pairs) == 12 and sorted(set(weights.tolist())) == [1.0, 2.0]
    expected = math.log(2) * weights + 0.5 * (-sums / counts)
    torch.testing.assert_close(losses, expected.float(), atol=1e-5, rtol=0)


def test_simpo_makes_no_reference_forward(tiny_path, weighted_jsonl, monkeypatch):
    """SimPO is reference-free: the step never calls the reference, and its loss is SimPO's formula on the
    policy's per-token average log-probs: -log sigma(beta (avg_c - avg_r) - gamma)."""
    module = DPOModule(tiny_path, peft=LORA, loss_type="simpo", beta=2.0, simpo_gamma=0.5)
    dm = data(weighted_jsonl, tiny_path, batch_size=12)
    batch = ready(module, dm)
    monkeypatch.setattr(DPOModule, "reference_logps", lambda *a: pytest.fail("SimPO called the reference"))
    assert module._frozen_reference == []
    with torch.no_grad():
        losses, policy, ref = module.pair_losses(batch, "train")
        sums, counts = module.reply_logps(batch)
    assert ref is None
    avg = sums / counts
    B = batch["index"].shape[0]
    expected = -F.logsigmoid(2.0 * (avg[:B] - avg[B:]) - 0.5) * batch["weight"]
    torch.testing.assert_close(losses, expected, atol=1e-5, rtol=0)


def test_precomputed_reference_gives_the_same_run(tiny_path, pairs_jsonl):
    histories = []
    for precompute in (False, True):
        L.seed_everything(0)
        module = DPOModule(tiny_path, peft=LORA, optim=OptimSettings(lr=5e-3), precompute_ref_logps=precompute)
        losses, _ = _first_step(module, data(pairs_jsonl, tiny_path), max_steps=3)
        histories.append(losses)
        if precompute:
            assert module._ref_cache["train"].shape == (12, 2)
    assert histories[0][0] == pytest.approx(math.log(2), abs=1e-6)
    assert histories[0] == pytest.approx(histories[1], abs=1e-5)
    assert histories[0][2] < histories[0][0]  # it learns


@pytest.mark.parametrize("cls", [DPOModule, RewardModule])
def test_accumulation_1x4_equals_4x1_pairs(tiny_path, weighted_jsonl, cls):
    """One optimizer step over 4 pairs: one micro-batch of 4 pairs == 4 micro-batches of 1 pair (SGD weights)."""
    results = []
    for micro in (4, 1):
        L.seed_everything(0)
        module = cls(tiny_path, peft=LORA, optim=OptimSettings(name="sgd", lr=1.0), micro_batch_size=micro,
                     gradient_clip_val=None)
        if cls is DPOModule:
            module.configure_model()
            randomise_lora(module)  # so that policy != reference and the loss has a gradient on both factors
        losses, _ = _first_step(module, data(weighted_jsonl, tiny_path))
        results.append((losses, {k: v.clone() for k, v in module.model.state_dict().items() if "lora" in k or "score" in k}))
    (la, wa), (lb, wb) = results
    assert la == pytest.approx(lb, abs=1e-6)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_reward_is_read_like_transformers_and_loss_is_bradley_terry(tiny_path, weighted_jsonl):
    """Rewards of a padded [chosen; rejected] batch equal transformers' sequence-classification output on each
    sequence alone; the step loss is sum_i w_i (-log sigma(r_c - r_r - m_i) + c (r_c + r_r)^2) / B."""
    module = RewardModule(tiny_path, peft=LORA, center_coef=0.1)
    dm = data(weighted_jsonl, tiny_path)
    batch = ready(module, dm)
    pairs = dm.splits["train"].rows[:6]
    with torch.no_grad():
        r = module.rewards(batch)
        net = module.model
        alone = [net(input_ids=torch.tensor([ex.input_ids])).logits[0, 0] for ex in
                 [p.chosen for p in pairs] + [p.rejected for p in pairs]]
        out = module.micro_step(batch)
    torch.testing.assert_close(r, torch.stack(alone), atol=1e-5, rtol=0)
    rc, rr = r.chunk(2)
    m, w = batch["margin"], batch["weight"]
    by_hand = sum(
        w[i].item() * (math.log(1 + math.exp(-(rc[i] - rr[i] - m[i]).item())) + 0.1 * (rc[i] + rr[i]).item() ** 2)
        for i in range(6)
    )
    assert out["loss_sum"].item() == pytest.approx(by_hand, rel=1e-5)
    assert out["correct_sum"].item() == ((rc > rr).sum() + 0.5 * (rc == rr).sum()).item()
    # the reward head trains in full beside LoRA
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_A" in n for n in trainable)


def test_reward_model_learns_a_separable_preference(tiny_path, pairs_jsonl):
    L.seed_everything(0)
    module = RewardModule(tiny_path, peft=LORA, optim=OptimSettings(lr=2e-2, warmup_steps=0))
    losses, metrics = _first_step(module, data(pairs_jsonl, tiny_path), max_steps=12)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert metrics[-1]["train/rewards/accuracies"] == 1.0


def test_weighted_combination_of_losses_feeds_each_its_own_log_probs(tiny_path, pairs_jsonl):
    """loss_type [sigmoid, ipo, discopop] with weights [1, 0.5, 2]: the pair loss is the weighted sum, with IPO on
    per-token averages and the others on sums (MPO-style mixture). Expected from the papers' formulas on log-probs of
    one plain forward per reply (policy: the LoRA model; reference: the base model), beta = 0.1, tau = 0.1:
    z = (pc - rc) - (pr - rr), x = beta z; sigmoid -log sigma(x); IPO (z_avg - 1 / (2 beta))^2 with z_avg the same
    difference on per-token averages; DiscoPOP m = sigma(x / tau), (1 - m)(-log sigma(x)) + m e^-x."""
    module = DPOModule(tiny_path, peft=LORA, loss_type=["sigmoid", "ipo", "discopop"], loss_weights=[1.0, 0.5, 2.0],
                       beta=0.1, discopop_tau=0.1)
    dm = data(pairs_jsonl, tiny_path)
    batch = ready(module, dm)
    randomise_lora(module)
    with torch.no_grad():
        losses, policy, ref = module.pair_losses(batch, "train")
    pairs = dm.splits["train"].rows[:6]  # the pairs of ``batch``
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    base = base_lm(tiny_path)
    (pc, nc), (pr, nr) = plain_logps(module.model, chosen), plain_logps(module.model, rejected)
    (rc, _), (rr, _) = plain_logps(base, chosen), plain_logps(base, rejected)
    assert (nc != nr).all()  # averaging changes the margins: "cat cat" vs "No, I will not say cat."
    x = 0.1 * ((pc - rc) - (pr - rr))
    z_avg = (pc - rc) / nc - (pr - rr) / nr
    m = torch.sigmoid(x / 0.1)
    expected = -F.logsigmoid(x) + 0.5 * (z_avg - 5.0) ** 2 + 2.0 * ((1 - m) * -F.logsigmoid(x) + m * torch.exp(-x))
    torch.testing.assert_close(losses, expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.chosen, pc.float(), atol=1e-4, rtol=0)  # metrics show what sigmoid sees: sums
    with pytest.raises(ValueError, match="loss_weights has 1 values for 2 losses"):
        DPOModule(tiny_path, loss_type=["sigmoid", "ipo"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="exo_pair needs label_smoothing"):
        DPOModule(tiny_path, loss_type="exo_pair")


def by_formula(loss_type, pc, pr, rc, rr, nc, nr, beta=0.1):
    """The papers' per-pair formulas on summed log-probs (policy p, reference r, chosen c, rejected r) and reply
    token counts n, with the log-ratios l_c = pc - rc, l_r = pr - rr."""
    lc, lr = pc - rc, pr - rr
    if loss_type == "apo_zero":  # raise the chosen likelihood, lower the rejected
        return 1 - torch.sigmoid(beta * lc) + torch.sigmoid(beta * lr)
    if loss_type == "sppo_hard":  # win probability 1 for the chosen, 0 for the rejected
        return (lc - 1 / (2 * beta)) ** 2 + (lr + 1 / (2 * beta)) ** 2
    if loss_type == "aot":  # rank i of the sorted policy margins against rank i of the sorted reference margins
        return -F.logsigmoid(beta * (torch.sort(pc - pr).values - torch.sort(rc - rr).values))
    assert loss_type == "sigmoid_norm"  # DPO on per-token averages
    return -F.logsigmoid(beta * (lc / nc - lr / nr))


@pytest.mark.parametrize(("loss_type", "step0"), [
    ("apo_zero", 1.0),  # 1 - sigma(beta l_c) + sigma(beta l_r) = 1 - 1/2 + 1/2
    ("sppo_hard", 50.0),  # (l_c - 1/(2 beta))^2 + (l_r + 1/(2 beta))^2 = (-5)^2 + 5^2
    ("aot", math.log(2)),  # sorted policy margins - sorted reference margins = 0: -log sigma(0)
    ("sigmoid_norm", math.log(2)),  # -log sigma(beta z), z = 0
], ids=["apo_zero", "sppo_hard", "aot", "sigmoid_norm"])
def test_every_registered_loss_trains_in_the_module(tiny_path, pairs_jsonl, loss_type, step0):
    """At step 0 the policy is the reference, so the log-ratios l_c = l_r = 0 and z = 0: each loss has its own
    closed-form value (beta = 0.1, the default), and one step of training lowers the loss on the next batch. With
    random adapters (policy != reference) the module's per-pair loss is the loss's formula (:func:`by_formula`) on
    log-probs of one plain forward per reply, which tells apart the losses that agree at step 0 (aot, sigmoid_norm
    and DPO's sigmoid are all log 2 there)."""
    L.seed_everything(0)
    module = DPOModule(tiny_path, peft=LORA, loss_type=loss_type, optim=OptimSettings(lr=5e-3))
    losses, _ = _first_step(module, data(pairs_jsonl, tiny_path), max_steps=2)
    assert len(losses) == 2
    assert losses[0] == pytest.approx(step0, abs=1e-5)
    assert losses[1] < losses[0]

    module = DPOModule(tiny_path, peft=LORA, loss_type=loss_type)
    dm = data(pairs_jsonl, tiny_path)
    batch = ready(module, dm)
    randomise_lora(module)
    with torch.no_grad():
        got = module.pair_losses(batch, "train")[0]
    pairs = dm.splits["train"].rows[:6]  # the pairs of ``batch``
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    base = base_lm(tiny_path)
    (pc, nc), (pr, nr) = plain_logps(module.model, chosen), plain_logps(module.model, rejected)
    (rc, _), (rr, _) = plain_logps(base, chosen), plain_logps(base, rejected)
    expected = by_formula(loss_type, pc, pr, rc, rr, nc, nr)
    sigmoid = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr)))
    assert (expected - sigmoid).abs().max() > 1e-3  # a loss that fell back to DPO's sigmoid would show
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)


def test_soft_labels_reach_the_dpo_and_reward_losses(tiny_path, tmp_path):
    """Records with ``label`` p: at step 0 (policy == reference, z = 0) DPO's sigmoid loss is
    -p log sigma(0) - (1 - p) log sigma(0) = log 2 whatever p; after randomising LoRA it equals the soft formula
    -p log sigma(beta z) - (1 - p) log sigma(-beta z) on log-probs of one plain forward per reply (policy: the LoRA
    model, reference: the base model); a loss that cannot take soft labels is refused with its name; the reward
    model's loss is the soft Bradley-Terry loss sum_i -p_i log sigma(d_i) - (1 - p_i) log sigma(-d_i), d_i the
    reward difference of pair i with each reply scored alone."""
    records = [dict(r, label=0.45 + 0.05 * i) for i, r in enumerate(_pairs(False))]  # 0.45 .. 1.0
    path = write_jsonl(tmp_path / "soft.jsonl", records)
    module = DPOModule(tiny_path, peft=LORA, beta=0.5)
    dm = data(path, tiny_path, batch_size=12)
    ready(module, dm)
    pairs = dm.splits["train"].rows
    batch = collate_pairs(pairs, dm._tokenizer().pad_token_id)
    p = torch.tensor([r["label"] for r in records], dtype=torch.float64)
    assert len(pairs) == 12 and batch["label"].tolist() == pytest.approx(p.tolist())
    with torch.no_grad():
        at_start, _, _ = module.pair_losses(batch, "train")
    torch.testing.assert_close(at_start, torch.full((12,), math.log(2)), atol=1e-6, rtol=0)
    randomise_lora(module)
    with torch.no_grad():
        losses, _, _ = module.pair_losses(batch, "train")
    chosen, rejected = [q.chosen for q in pairs], [q.rejected for q in pairs]
    base = base_lm(tiny_path)
    (pc, _), (pr, _) = plain_logps(module.model, chosen), plain_logps(module.model, rejected)
    (rc, _), (rr, _) = plain_logps(base, chosen), plain_logps(base, rejected)
    z = 0.5 * ((pc - rc) - (pr - rr))
    torch.testing.assert_close(losses, (-p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z)).float(), atol=1e-5,
                               rtol=1e-5)
    hinge = DPOModule(tiny_path, peft=LORA, loss_type="hinge")
    hinge.configure_model()
    with pytest.raises(ValueError, match=r"soft labels.*\['hinge'\]"):
        hinge.pair_losses(batch, "train")
    reward = RewardModule(tiny_path)
    reward.configure_model()
    with torch.no_grad():
        got = reward.micro_step(batch)["loss_sum"].item()
        alone = [[reward.model(input_ids=torch.tensor([ex.input_ids])).logits[0, 0].item() for ex in side]
                 for side in (chosen, rejected)]
    by_hand = sum(pi * math.log1p(math.exp(-(c - r))) + (1 - pi) * math.log1p(math.exp(c - r))
                  for pi, c, r in zip(p.tolist(), *alone))
    assert got == pytest.approx(by_hand, rel=1e-5)


# ---- a loss with a setting of its own, registered by the test alone ------------------------------------------------
def margin_hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, alpha=0.3):
    """A loss that is not in the package: ``max(0, alpha - beta z)``, with its own setting ``alpha``."""
    z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    return torch.relu(alpha - beta * z)


def dpo_from_yaml(text: str) -> DPOModule:
    """A DPOModule built from YAML the way the training CLI builds it (jsonargparse over the signature)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(DPOModule, "model")
    return parser.instantiate_classes(parser.parse_string(text)).model


def test_a_new_loss_with_its_own_setting_needs_only_its_registration(tiny_path, monkeypatch):
    """Registering ``margin_hinge`` (above) in DPO_LOSSES is all it takes: YAML selects it and sets its ``alpha``
    through ``loss_settings``, and DPOModule passes it exactly the settings it declares. By hand, on the pairs of
    test_preference_losses (z = [1.5, -1]) with beta = 1: alpha = 0.7 gives max(0, 0.7 - 1.5) = 0 and
    max(0, 0.7 + 1) = 1.7; without loss_settings the signature's default alpha = 0.3 gives [0, 1.3]. A misspelled
    setting, or a shared one that the loss does not read, is refused when the module is built."""
    from lightning_post.errors import ConfigError
    from lightning_post.losses.preference import DPO_LOSSES, dpo_loss_settings
    from lightning_post.methods.dpo import combined_preference_loss

    monkeypatch.setitem(DPO_LOSSES, "margin_hinge", margin_hinge_loss)
    assert dpo_loss_settings("margin_hinge") == {"beta": 0.1, "alpha": 0.3}  # discoverable from the registry
    sums = torch.tensor([-5.0, -3.0, -7.0, -2.0])  # [chosen; rejected]
    ref_sums, counts = torch.tensor([-6.0, -3.0, -6.5, -3.0]), torch.tensor([3, 3, 3, 3])
    def build(loss_type="margin_hinge", more=""):
        return dpo_from_yaml(f"model:\n  model_name_or_path: {tiny_path}\n  beta: 1.0\n  loss_type: {loss_type}\n{more}")

    def losses(module):
        return combined_preference_loss(module.loss_types, module.loss_weights, sums, ref_sums, counts,
                                        **module._settings()).tolist()

    assert losses(build(more="  loss_settings: {alpha: 0.7}\n")) == pytest.approx([0.0, 1.7], abs=1e-6)
    assert losses(build()) == pytest.approx([0.0, 1.3], abs=1e-6)
    mixed = build("[margin_hinge, sigmoid]", "  loss_settings: {alpha: 0.7}\n")
    sigmoid = [math.log1p(math.exp(-1.5)), math.log1p(math.exp(1.0))]  # -log sigma(z): alpha is not passed to it
    assert losses(mixed) == pytest.approx([0.0 + sigmoid[0], 1.7 + sigmoid[1]], abs=1e-6)
    with pytest.raises(ConfigError, match="model.loss_settings.alpah: not a setting of loss_type margin_hinge; "
                                          "it reads alpha, beta"):
        build(more="  loss_settings: {alpah: 0.7}\n")
    with pytest.raises(ConfigError, match=r"model.simpo_gamma: 1.0 is not used by loss_type margin_hinge \(a "
                                          r"setting of simpo\)"):
        build(more="  simpo_gamma: 1.0\n")
    with pytest.raises(ConfigError, match="model.loss_settings.tau: set it as model.discopop_tau"):
        build("discopop", "  loss_settings: {tau: 0.1}\n")
    with pytest.raises(ConfigError, match=r"model.loss_settings.alpha: not a setting of loss_type sigmoid \(a "
                                          r"setting of margin_hinge\)"):
        build("sigmoid", "  loss_settings: {alpha: 0.7}\n")
