"""KTOModule on the tiny model: exact step-0 values, the reference point, accumulation, the command line."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_post import DPOModule, KTOModule, PeftSettings, UnpairedDataModule
from lightning_post.optim import OptimSettings
from tests.conftest import CONFIGS, write_jsonl
from tests.cli_runner import cli, client
from tests.test_preference_training import _first_step, _pairs, randomise_lora
from tests.test_preference_training import data as pair_data

LORA = PeftSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


@pytest.fixture
def unpaired_jsonl(tmp_path):
    words = ["cat", "dog", "sun", "sky", "tree", "rain"]
    records = []
    for n, w in zip(range(1, 9), words * 2):
        records.append({"prompt": f"Say {w} {n} times.", "completion": " ".join([w] * n), "label": True})
        records.append({"prompt": f"Say {w} {n} times.", "completion": f"No, I will not say {w}.", "label": False})
    return write_jsonl(tmp_path / "kto.jsonl", records)


def data(path, tok, **kw):
    kw.setdefault("batch_size", 8)
    return UnpairedDataModule(train_files=str(path), val_files=str(path), tokenizer=tok, template="basic",
                              max_length=64, min_prompt_length=8, shuffle=False, **kw)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.5)])
def test_step0_loss_is_half_the_mean_weight(tiny_path, unpaired_jsonl, weights):
    """Policy == reference at step 0: r = 0 and z0 = 0, so each example costs w / 2."""
    L.seed_everything(0)
    module = KTOModule(tiny_path, peft=LORA, desirable_weight=weights[0], undesirable_weight=weights[1])
    losses, metrics = _first_step(module, data(unpaired_jsonl, tiny_path))
    assert losses[0] == pytest.approx(0.5 * (weights[0] + weights[1]) / 2, abs=1e-6)  # 4 desirable, 4 undesirable
    assert metrics[0]["train/kl"] == 0.0 and metrics[0]["train/rewards/chosen"] == pytest.approx(0.0, abs=1e-6)


def test_reference_point_uses_the_mismatched_rows(tiny_path, unpaired_jsonl):
    """z0 = max(0, mean_i [log pi(y_j|x_i) - log pi_ref(y_j|x_i)]) over the batch's mismatched rows: prompt i with
    completion j = (i + 1) mod B, each row's log-probs from one plain forward of the LoRA policy and of the base model
    (the reference). The matched rows (j = i) would give another value."""
    from lightning_post.records.tokenize import IGNORE_INDEX, Tokenized
    from tests.test_preference_training import base_lm, plain_logps

    module = KTOModule(tiny_path, peft=LORA)
    module.configure_model()
    dm = data(unpaired_jsonl, tiny_path)
    dm.prepare_data()
    dm.setup("fit")
    examples = dm.splits["train"].rows[:6]
    batch = dm.collate(examples)
    randomise_lora(module)
    base = base_lm(tiny_path)

    def estimate(shift: int) -> float:
        rows = []
        for i, e in enumerate(examples):
            completion = examples[(i + shift) % 6].completion
            assert len(e.prompt) + len(completion) < 64  # max_length: nothing is cut
            rows.append(Tokenized(e.prompt + completion, [IGNORE_INDEX] * len(e.prompt) + completion))
        policy, ref = plain_logps(module.model, rows)[0], plain_logps(base, rows)[0]
        return max(0.0, (policy - ref).mean().item())

    by_hand, matched = estimate(1), estimate(0)
    assert by_hand > 0 and abs(by_hand - matched) > 1e-2
    assert module.reference_point(batch).item() == pytest.approx(by_hand, abs=1e-5)


def test_accumulation_1x8_equals_8x1(tiny_path, unpaired_jsonl):
    results = []
    for micro in (8, 1):
        L.seed_everything(0)
        module = KTOModule(tiny_path, peft=LORA, optim=OptimSettings(name="sgd", lr=1.0), micro_batch_size=micro,
                           gradient_clip_val=None)
        module.configure_model()
        randomise_lora(module)
        losses, _ = _first_step(module, data(unpaired_jsonl, tiny_path))
        results.append((losses, {k: v.clone() for k, v in module.model.state_dict().items() if "lora" in k}))
    (la, wa), (lb, wb) = results
    assert la == pytest.approx(lb, abs=1e-6)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def _validate(module, dm) -> dict:
    L.seed_everything(0)
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    t.validate(module, dm, verbose=False)
    return {k: v.item() for k, v in t.callback_metrics.items()}


def test_paired_validation_equals_dpo_implicit_reward_accuracy(tiny_path, unpaired_jsonl, tmp_path):
    """Held-out pairs measured in KTO are measured exactly as DPO measures them: the share of pairs whose chosen
    reply has the higher ``beta * (log pi - log pi_ref)``. Untrained, every pair ties (0.5); with the same adapters
    both modules report the same accuracy and margin."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs(False))
    kto, dpo = KTOModule(tiny_path, peft=LORA, beta=0.2), DPOModule(tiny_path, peft=LORA, beta=0.2)
    dm = data(unpaired_jsonl, tiny_path, val_pair_files=str(pairs))
    before = _validate(kto, dm)
    assert before["val/pairs/accuracies"] == 0.5 and before["val/pairs/margins"] == 0.0
    assert before["val/rewards/accuracies"] == 0.5  # unpaired examples too: r = z0 = 0 ties, counted half
    dpo.configure_model()
    for module in (kto, dpo):
        randomise_lora(module)
    got, want = _validate(kto, dm), _validate(dpo, pair_data(pairs, tiny_path))
    assert got["val/pairs/accuracies"] == want["val/rewards/accuracies"] != 0.5
    assert got["val/pairs/margins"] == pytest.approx(want["val/rewards/margins"], abs=1e-5)
    assert got["val/pairs/margins"] != 0


def test_kto_fit_from_the_command_line(tmp_path):
    cli(["fit", "--config", str(CONFIGS / "kto/tiny.yaml"), "--trainer.max_steps", "2", "--trainer.val_check_interval",
         "2", "--samples.max_new_tokens", "4"], tmp_path)
    c = client(tmp_path)
    run = c.search_runs(c.get_experiment_by_name("kto").experiment_id)[0]
    for key in ("train/loss", "train/kl", "train/rewards/chosen", "train/rewards/rejected", "val/loss",
                "val/rewards/accuracies"):
        assert key in run.data.metrics, key
    assert c.get_metric_history(run.info.run_id, "train/loss")[0].value == pytest.approx(0.5, abs=1e-6)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c", "label": "up"}])
    out = cli(["fit", "--config", str(CONFIGS / "kto/tiny.yaml"), "--data.init_args.train_files", str(bad)], tmp_path,
              check=False)
    assert out.returncode != 0 and f"{bad}:1: field 'label'" in out.stderr
