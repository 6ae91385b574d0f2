"""FSDP2 (configs/strategies/fsdp.yaml) on 2 CPU processes == 1 process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS
from tests.cli_runner import cli, client

OVERLAY = ["--config", str(CONFIGS / "strategies" / "fsdp.yaml"), "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.precision", "32-true"]
COMMON = ["--data.init_args.val_fraction", "0", "--trainer.limit_val_batches", "0", "--trainer.max_steps", "3",
          "--samples.enabled", "false", "--model.init_args.optim.name", "sgd", "--model.init_args.optim.lr", "0.5"]

# method -> (config, experiment, extra arguments); full SFT trains the (tied) embeddings, which FSDP2 shards with
# the decoder; the reward model's score head stays whole on each process and is averaged like DDP's
CASES = {
    "sft_full": ("sft/tiny.yaml", "sft", ["--model.init_args.peft", "null", "--data.init_args.template", "basic"]),
    "dpo_lora": ("dpo/tiny.yaml", "dpo", []),
    "reward_lora": ("reward/tiny.yaml", "reward", []),
}


def history(cwd: Path, experiment: str, key: str) -> list[float]:
    c = client(cwd)
    run = c.search_runs(c.get_experiment_by_name(experiment).experiment_id)[0]
    return [m.value for m in c.get_metric_history(run.info.run_id, key)]


def exported(cwd: Path, experiment: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    c = client(cwd)
    run = c.search_runs(c.get_experiment_by_name(experiment).experiment_id)[0]
    return load_file(Path(run.data.tags["export_model"]) / "model.safetensors")


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsdp2_two_processes_match_one_process(tmp_path, small_jsonl, case):
    """2 CPU processes x batch 4 under FSDP2 == 1 process x batch 8: same losses, gradient norms (clipped at 1.0
    over shards and whole parameters alike) and exported weights (gathered from the shards)."""
    config, experiment, extra = CASES[case]
    args = ["fit", "--config", str(CONFIGS / config), *COMMON, *extra]
    if experiment == "sft":
        args += ["--data.init_args.train_files", str(small_jsonl)]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    cli(args + ["--data.init_args.batch_size", "8"], one)
    cli(args + ["--data.init_args.batch_size", "4", *OVERLAY], two)
    for key in ("train/loss", "train/grad_norm"):
        a, b = history(one, experiment, key), history(two, experiment, key)
        assert len(a) == 3 and a == pytest.approx(b, rel=1e-4, abs=1e-5), key
    assert max(history(one, experiment, "train/grad_norm")) > 1.0 or case != "sft_full"  # clipping was exercised
    w1, w2 = exported(one, experiment), exported(two, experiment)
    # the whole merged model was exported: the tiny Llama's 2 layers x 9 weights (q, k, v, o, gate, up, down, two
    # norms) + embeddings + final norm (lm_head tied to the embeddings), and the reward model's score head
    layer = {f"model.layers.{i}.{w}.weight" for i in range(2) for w in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
        "mlp.down_proj", "input_layernorm", "post_attention_layernorm")}
    head = {"score.weight"} if experiment == "reward" else set()
    assert set(w1) == set(w2) == layer | {"model.embed_tokens.weight", "model.norm.weight"} | head
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


def test_fsdp2_refuses_what_it_cannot_shard(tmp_path):
    """Prefix tuning and PPO under FSDP2 stop before training with a message naming what to use instead."""
    one_process = [*OVERLAY[:2], "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision",
                   "32-true"]
    out = cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), *one_process, "--model.init_args.peft.method", "prefix"],
              tmp_path, check=False)
    assert out.returncode != 0 and "FSDP cannot shard prefix tuning" in out.stderr
    out = cli(["fit", "--config", str(CONFIGS / "ppo/tiny.yaml"), *one_process], tmp_path, check=False)
    assert out.returncode != 0 and "PPOModule cannot run under FSDP2Strategy" in out.stderr


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("peft", ["lora", "full"])
def test_fsdp2_resume_equals_continuous(tmp_path, small_jsonl, peft):
    """A 4-step run under FSDP2 checkpointed at step 2 (one file gathered on rank 0; with LoRA the adapters and
    their optimizer state only), resumed from there: steps 3-4 have the continuous run's losses (AdamW, cosine)."""
    ckpts = tmp_path / "ckpt"
    args = ["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), *OVERLAY, "--data.init_args.train_files", str(small_jsonl),
            "--data.init_args.template", "basic", "--data.init_args.val_fraction", "0", "--trainer.limit_val_batches",
            "0", "--trainer.max_steps", "4", "--samples.enabled", "false", "--data.init_args.batch_size", "4"]
    if peft == "full":
        args += ["--model.init_args.peft", "null"]
    cli(args + ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                "--trainer.callbacks.every_n_train_steps=2", "--trainer.callbacks.save_top_k=-1",
                f"--trainer.callbacks.dirpath={ckpts}"], tmp_path)
    step2 = next(ckpts.glob("*step=2.ckpt"))
    assert step2.is_file()
    state = torch.load(step2, weights_only=False)
    assert state["state_dict"] and all(("lora_" in k) == (peft == "lora") for k in state["state_dict"])
    cli(args + ["--ckpt_path", str(step2)], tmp_path)
    c = client(tmp_path)
    runs = sorted(c.search_runs(c.get_experiment_by_name("sft").experiment_id), key=lambda r: r.info.start_time)
    continuous, resumed = ([(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "train/loss")]
                           for r in runs)
    assert [s for s, _ in resumed] == [2, 3]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in continuous[2:]], abs=1e-5)
