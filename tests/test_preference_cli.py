"""Reward model and DPO through the command line on the tiny model: MLflow metrics, export, predict, chaining."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
import torch

from tests.conftest import CONFIGS, write_jsonl
from tests.cli_runner import cli, client

QUICK = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--samples.max_new_tokens", "4"]


def only_run(cwd, experiment):
    c = client(cwd)
    runs = c.search_runs(c.get_experiment_by_name(experiment).experiment_id, order_by=["attributes.start_time DESC"])
    return c, runs[0]


def test_dpo_fit_logs_trl_metric_names_and_tests(tmp_path):
    cli(["fit", "--config", str(CONFIGS / "dpo/tiny.yaml"), *QUICK], tmp_path)
    c, run = only_run(tmp_path, "dpo")
    assert run.data.tags["method"] == "dpo"
    for split in ("train", "val"):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                     "logps/chosen", "logps/rejected"):
            assert f"{split}/{name}" in run.data.metrics, f"{split}/{name}"
    first = c.get_metric_history(run.info.run_id, "train/loss")[0]
    assert first.step == 0 and first.value == pytest.approx(math.log(2), abs=1e-6)
    m = run.data.metrics
    assert m["val/rewards/margins"] == pytest.approx(m["val/rewards/chosen"] - m["val/rewards/rejected"], abs=1e-5)
    for key in ("data/train_pairs", "data/train_prompt_truncated", "data/train_reply_truncated",
                "data/train_identical_pairs", "data/invalid_pairs"):
        assert key in run.data.params and key not in m, key
    assert Path(run.data.tags["export_adapter"], "adapter_model.safetensors").is_file()
    ckpt = Path(run.data.tags["export_dir"]).parent / "checkpoints" / "last.ckpt"
    cli(["test", "--config", str(CONFIGS / "dpo/tiny.yaml"), "--ckpt_path", str(ckpt), "--samples.enabled", "false"],
        tmp_path)
    _, test_run = only_run(tmp_path, "dpo")
    assert test_run.data.tags["stage"] == "test"
    assert test_run.data.metrics["test/rewards/margins"] == pytest.approx(m["val/rewards/margins"], abs=1e-5)


def test_reward_export_scores_pairs_like_transformers(tmp_path):
    """fit -> export (a sequence-classification model) -> ``predict`` writes a score per record, equal to what
    transformers' AutoModelForSequenceClassification gives on the same text."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cli(["fit", "--config", str(CONFIGS / "reward/tiny.yaml"), *QUICK], tmp_path)
    c, run = only_run(tmp_path, "reward")
    m = run.data.metrics
    # the names DPO logs too, so reward and preference runs compare side by side
    for key in ("train/loss", "train/rewards/accuracies", "train/rewards/margins", "train/rewards/chosen",
                "train/rewards/chosen_std", "train/rewards/rejected", "train/rewards/rejected_std",
                "val/rewards/accuracies", "val/rewards/margins", "val/rewards/chosen", "val/rewards/rejected_std"):
        assert key in m, key
    assert {a.path for a in c.list_artifacts(run.info.run_id, "plots")} == {
        "plots/loss.png", "plots/rewards.png", "plots/lr.png", "plots/reward_distribution.png"}
    assert "samples" not in {a.path for a in c.list_artifacts(run.info.run_id)}  # a reward model does not generate
    exported = run.data.tags["export_model"]
    records = [{"prompt": "What is 2+2?", "response": "4"},
               {"prompt": "Hi", "chosen": "Hello! How can I help?", "rejected": "Go away."},
               {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}]
    pairs = write_jsonl(tmp_path / "to_score.jsonl", records)
    out = tmp_path / "scores.jsonl"
    cli(["predict", "--config", str(CONFIGS / "reward/tiny.yaml"), "--model.init_args.model_name_or_path", exported,
         "--model.init_args.peft", "null", "--data.init_args.predict_files", str(pairs),
         "--scores.output_path", str(out)], tmp_path)
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s.get("prompt") for s in scored] == [r.get("prompt") for r in records]
    assert scored[1]["score_margin"] == pytest.approx(scored[1]["score_chosen"] - scored[1]["score_rejected"])
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tok = AutoTokenizer.from_pretrained(exported)

    def hf(prompt, reply):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                                       tokenize=False)
        text = text[: text.rindex(tok.eos_token) + len(tok.eos_token)]  # the sequence ends at the reply's EOS
        with torch.no_grad():
            return model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()

    assert scored[0]["score"] == pytest.approx(hf("What is 2+2?", "4"), abs=1e-4)
    assert scored[1]["score_chosen"] == pytest.approx(hf("Hi", "Hello! How can I help?"), abs=1e-4)
    assert scored[2]["score"] == pytest.approx(hf("Name a colour.", "Blue."), abs=1e-4)
    # the MLflow model logged by the export scores (prompt, response) records the same way
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    try:
        scorer = mlflow.pyfunc.load_model(f"models:/{run.data.tags['mlflow_model_id']}")
        assert scorer.predict([{"prompt": "What is 2+2?", "response": "4"}]) == \
            pytest.approx([hf("What is 2+2?", "4")], abs=1e-4)
    finally:
        mlflow.set_tracking_uri(None)


def test_dpo_starts_from_an_sft_export(tmp_path, sft_run):
    """Chaining: the SFT export (the session's tiny fit) is the DPO policy's start and (adapters disabled) its
    reference."""
    _, sft = sft_run
    cli(["fit", "--config", str(CONFIGS / "dpo/tiny.yaml"), *QUICK,
         "--model.init_args.model_name_or_path", sft.data.tags["export_model"]], tmp_path)
    c, dpo = only_run(tmp_path, "dpo")
    assert dpo.data.tags["model"] == sft.data.tags["export_model"]
    assert c.get_metric_history(dpo.info.run_id, "train/loss")[0].value == pytest.approx(math.log(2), abs=1e-6)


def test_bad_preference_file_stops_before_anything_is_written(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                               {"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}])
    out = cli(["fit", "--config", str(CONFIGS / "dpo/tiny.yaml"), "--data.init_args.train_files", str(bad)], tmp_path,
              check=False)
    assert out.returncode != 0
    assert f"{bad}:2: field 'margin': must be a finite number" in out.stderr
    assert not (tmp_path / "mlruns" / "runs").exists()
    out = cli(["fit", "--config", str(CONFIGS / "dpo/tiny.yaml"), "--model.init_args.loss_type", "nope"], tmp_path,
              check=False)
    assert out.returncode != 0 and "loss_type 'nope' is unknown" in out.stderr


def test_hh_rlhf_overlay_prints_for_both_methods(tmp_path):
    for method in ("reward", "dpo"):
        out = cli(["fit", "--config", str(CONFIGS / method / "default.yaml"), "--config", str(CONFIGS / "datasets" / "hh_rlhf.yaml"),
                   "--print_config"], tmp_path)
        data = yaml.safe_load(out.stdout)["data"]["init_args"]
        assert data["train_files"].endswith("hh_rlhf_harmless_base_test.jsonl.gz")
        assert data["val_size"] == 300 and data["skip_invalid"] is True
