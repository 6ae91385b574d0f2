"""The command line end to end on the tiny model: configs, MLflow store, export, test stage, bad input, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_runner import cli, client
from tests.conftest import CONFIGS, ROOT


def test_every_config_prints(tmp_path, monkeypatch):
    """Every shipped YAML parses (strategy overlays on top of the SFT config)."""
    from lightning_post.commands import command_classes, parse_command

    classes = command_classes()  # "evaluate", ..., "pipeline", "data report", ...

    every = sorted(CONFIGS.rglob("*.yaml"))
    folder = {p: p.parent.relative_to(CONFIGS).as_posix() for p in every}
    commands = {p: name for p in every for name in classes
                if name != "pipeline" and folder[p] == name.replace("-", "_")}
    data = {p: p.stem for p in every if folder[p] == "data"}
    pipelines = [p for p in every if folder[p] == "pipeline"]
    method_overlays = {CONFIGS / "sft/jailbreak.yaml": CONFIGS / "sft/default.yaml"}  # overlay -> the config it changes
    overlays = [p for p in every if folder[p] in ("strategies", "datasets")]  # added to another config
    base = [p for p in every if p not in commands and p not in data and p not in pipelines
            and p not in method_overlays and p not in overlays]
    assert {folder[p] for p in base} == {"sft", "reward", "dpo", "kto", "ppo", "cai", "online_dpo"}
    assert all((CONFIGS / f / "default.yaml").exists() and (CONFIGS / f / "tiny.yaml").exists()
               for f in {folder[p] for p in base} | {folder[p] for p in commands} | {"pipeline"})
    assert [p.name for p in pipelines] == ["default.yaml", "safety.yaml", "tiny.yaml", "tiny_safety.yaml"]
    monkeypatch.chdir(ROOT)  # a pipeline's stage configs are paths from the repository root
    for cfg in pipelines:
        pipe = parse_command("pipeline", ["--config", str(cfg)])[1]
        assert {c for s in pipe.stages for c in s.configs} <= {f"configs/{p.relative_to(CONFIGS).as_posix()}"
                                                               for p in every}, cfg
    for overlay, config in method_overlays.items():  # the overlay's values land on top of its config
        out = cli(["fit", "--config", str(config), "--config", str(overlay), "--print_config"], tmp_path)
        printed, wanted = yaml.safe_load(out.stdout), yaml.safe_load(overlay.read_text())
        assert printed["model"]["init_args"]["optim"]["lr"] == wanted["model"]["init_args"]["optim"]["lr"] != \
            yaml.safe_load(config.read_text())["model"]["init_args"]["optim"]["lr"], overlay
        assert printed["data"]["init_args"]["train_files"] == wanted["data"]["init_args"]["train_files"], overlay
        assert printed["trainer"]["logger"]["init_args"]["experiment_name"] == "jailbreak_sft", overlay
    overlays = sorted((CONFIGS / "strategies").glob("*.yaml"))  # datasets/: test_preference_cli
    assert base and overlays and sorted(commands.values()) == ["abtest", "abtest", "evaluate", "evaluate",
                                                                "jailbreak-data", "jailbreak-data", "redteam", "redteam"]
    assert sorted(data.values()) == ["label", "report"]
    for cfg, name in commands.items():  # evaluate / abtest configs parse into their command
        assert isinstance(parse_command(name, ["--config", str(cfg)])[1], classes[name]), cfg
    for cfg, name in data.items():  # lightning-post data <name> configs
        assert isinstance(parse_command(f"data {name}", ["--config", str(cfg)])[1], classes[f"data {name}"]), cfg
    for cfg in base:
        out = cli(["fit", "--config", str(cfg), "--print_config"], tmp_path)
        assert "class_path: lightning_post." in out.stdout, cfg
    for overlay in overlays:
        out = cli(["fit", "--config", str(CONFIGS / "sft/default.yaml"), "--config", str(overlay), "--print_config"], tmp_path)
        printed = yaml.safe_load(out.stdout)["trainer"]["strategy"]
        wanted = yaml.safe_load(overlay.read_text())["trainer"]["strategy"]
        if isinstance(wanted, dict):  # the printed config adds every default init arg
            assert printed["class_path"] == wanted["class_path"], overlay
            assert wanted["init_args"].items() <= printed["init_args"].items(), overlay
        else:
            assert printed == wanted, overlay


@pytest.fixture
def tiny_run(sft_run):
    """The session's ``fit`` of configs/sft/tiny.yaml: (folder, run)."""
    return sft_run


def test_fit_records_everything_in_mlflow(tiny_run):
    cwd, run = tiny_run
    c = client(cwd)
    params, tags = run.data.params, run.data.tags
    assert params["model.init_args.model_name_or_path"] == "tiny-llama"
    assert params["data.init_args.template"] == "chat"
    assert params["trainer.max_steps"] == "4"
    assert int(params["params/trainable"]) > 0 and int(params["params/total"]) > int(params["params/trainable"])
    assert tags["method"] == "sft" and tags["model"] == "tiny-llama" and len(tags["git_commit"]) > 0
    losses = c.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [0, 1, 2, 3]
    for key in ("train/perplexity", "train/token_accuracy", "train/tokens_per_sec", "val/loss", "val/perplexity",
                "val/token_accuracy"):
        assert key in run.data.metrics, key
    for key in ("data/train_examples", "data/train_truncated", "data/train_dropped"):  # constants: params
        assert key not in run.data.metrics and int(params[key]) >= 0, key
    assert int(params["data/train_examples"]) > 0
    assert run.data.metrics["val/perplexity"] == pytest.approx(torch.tensor(run.data.metrics["val/loss"]).exp().item(),
                                                               rel=1e-5)
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples"} <= artifacts
    samples = {a.path for a in c.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"samples/val_step000002.json", "samples/val_step000004.json"}
    table = json.loads(Path(c.download_artifacts(run.info.run_id, "samples/val_step000004.json", str(cwd))).read_text())
    assert len(table["data"]) == 4 and table["columns"] == ["step", "prompt", "response"]
    config = yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "config.yaml", str(cwd))).read_text())
    assert config["model"]["init_args"]["peft"]["r"] == 4
    # checkpoints live under the run's folder, not the working directory
    run_dir = cwd / "mlruns" / "runs" / run.info.experiment_id / run.info.run_id
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert tags["export_dir"] == str((run_dir / "export").resolve())
    # plots drawn from the run's own history: loss (train + val) and learning rate, as PNG files
    plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss.png", "plots/lr.png"}
    png = Path(c.download_artifacts(run.info.run_id, "plots/loss.png", str(cwd))).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_fit_logs_an_mlflow_model_that_answers_like_the_export(tiny_run):
    """The export is logged as an MLflow model (the adapter with its base's name): the UI lists it, and loading it
    with ``mlflow.pyfunc`` gives the same greedy answers as the exported merged model."""
    import mlflow

    from lightning_post.methods.policy import load_policy
    from lightning_post.generation import ChatGenerator

    cwd, run = tiny_run
    uri = f"sqlite:///{cwd}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
        assert [m.source_run_id for m in models] == [run.info.run_id]
        assert models[0].model_id == run.data.tags["mlflow_model_id"] and models[0].tags["base"] == "tiny-llama"
        files = {a.path for a in
                 mlflow.MlflowClient(uri).list_logged_model_artifacts(models[0].model_id, "artifacts/adapter")}
        assert "artifacts/adapter/adapter_config.json" in files  # the adapter, not a copy of the full weights
        assert not any(f.endswith("/model.safetensors") for f in files)
        chat = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
        answers = chat.predict(["Hello there", "Name a colour."])
    finally:
        mlflow.set_tracking_uri(None)
    model, tok = load_policy(str(Path(run.data.tags["export_dir"]) / "model"))
    expected = ChatGenerator(model, tok, 8, 128).generate([[{"role": "user", "content": "Hello there"}],
                                                          [{"role": "user", "content": "Name a colour."}]])
    assert answers == expected and all(answers)


def test_export_reloads_and_generates(tiny_run, tiny_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cwd, run = tiny_run
    export = Path(run.data.tags["export_dir"])
    tok = AutoTokenizer.from_pretrained(export / "model")
    merged = AutoModelForCausalLM.from_pretrained(export / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    adapted = PeftModel.from_pretrained(base, export / "adapter")
    ids = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        a = merged(**ids).logits
        b = adapted(**ids).logits
    assert torch.allclose(a, b, atol=1e-4)  # merged weights == base + adapter
    out = merged.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or tok.eos_token_id in out[0].tolist()


def test_test_stage_reports_loss_perplexity_and_samples(tiny_run):
    cwd, run = tiny_run
    ckpt = cwd / "mlruns" / "runs" / run.info.experiment_id / run.info.run_id / "checkpoints" / "last.ckpt"
    out = cli(["test", "--config", str(CONFIGS / "sft/tiny.yaml"), "--ckpt_path", str(ckpt)], cwd)
    assert "test/loss" in out.stdout and "test/perplexity" in out.stdout
    c = client(cwd)
    runs = c.search_runs(c.get_experiment_by_name("sft").experiment_id, order_by=["attributes.start_time DESC"])
    test_run = runs[0]
    assert "test/loss" in test_run.data.metrics
    assert any(a.path.startswith("samples/test_") for a in c.list_artifacts(test_run.info.run_id, "samples"))
    # generation metrics of the test stage: answers to the test prompts scored against their references
    for key in ("test/bleu", "test/corpus_bleu", "test/rouge1", "test/rouge2", "test/rougeL", "test/bertscore"):
        assert key in test_run.data.metrics, key
    from lightning_post.scoring.text_metrics import sentence_bleu, sentence_rouge

    table = json.loads(Path(c.download_artifacts(test_run.info.run_id, "test_generations.json", str(cwd))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert rows and all(r["reference"] for r in rows)
    for r in rows:  # one at a time, with the language's tokenizer
        tokenize = {"en": "13a", "ko": "char"}[r["language"]]
        assert r["bleu"] == pytest.approx(sentence_bleu(r["answer"], r["reference"], tokenize))
        assert r["rouge1"] == pytest.approx(sentence_rouge(r["answer"], r["reference"], r["language"])["rouge1"])
    assert test_run.data.metrics["test/rouge1"] == pytest.approx(sum(r["rouge1"] for r in rows) / len(rows), abs=1e-5)
    for lang in {r["language"] for r in rows}:  # the per-language breakdown and the sacrebleu signature
        mine = [r["rouge1"] for r in rows if r["language"] == lang]
        assert test_run.data.metrics[f"test/{lang}/rouge1"] == pytest.approx(sum(mine) / len(mine), abs=1e-5)
        assert "tok:" in test_run.data.params[f"test/bleu_signature.{lang}"]


def test_bad_input_stops_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "a", "response": ""}\n')
    out = cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--data.train_files", str(bad)], tmp_path, check=False)
    assert out.returncode != 0
    assert f"{bad}:2: field 'response': is empty" in out.stderr
    assert not (tmp_path / "mlruns" / "runs").exists()
    db = tmp_path / "mlruns" / "mlflow.db"
    if db.exists():
        c = client(tmp_path)
        exp = c.get_experiment_by_name("sft")
        assert exp is None or not c.search_runs(exp.experiment_id)


def test_unknown_template_is_refused(tmp_path):
    out = cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--data.template", "vicuna"], tmp_path, check=False)
    assert out.returncode != 0 and "unknown template 'vicuna'" in out.stderr


@pytest.mark.slow  # several processes
def test_ddp_two_processes_match_one_process(tmp_path, small_jsonl):
    """2 CPU processes x batch 4 == 1 process x batch 8: the same global batch gives the same losses and weights."""
    common = ["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--data.train_files", str(small_jsonl),
              "--data.template", "basic", "--data.val_fraction", "0", "--trainer.limit_val_batches", "0",
              "--trainer.max_steps", "3", "--samples.enabled", "false", "--model.init_args.optim.name", "sgd",
              "--model.init_args.optim.lr", "0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    cli(common + ["--data.batch_size", "8"], one)
    cli(common + ["--data.batch_size", "4", "--trainer.strategy", "ddp", "--trainer.devices", "2"], two)
    histories, adapters = [], []
    for cwd in (one, two):
        c = client(cwd)
        run = c.search_runs(c.get_experiment_by_name("sft").experiment_id)[0]
        histories.append([m.value for m in c.get_metric_history(run.info.run_id, "train/loss")])
        from safetensors.torch import load_file

        adapters.append(load_file(Path(run.data.tags["export_adapter"]) / "adapter_model.safetensors"))
    assert len(histories[0]) == 3
    assert histories[0] == pytest.approx(histories[1], abs=1e-5)
    # LoRA on q_proj and v_proj (configs/sft/tiny.yaml) of the 2 layers: 2 x 2 x (lora_A, lora_B) = 8 tensors in each
    assert set(adapters[0]) == set(adapters[1]) == {
        f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight" for i in range(2) for m in ("q_proj", "v_proj")
        for ab in "AB"}
    for k in adapters[0]:
        assert torch.allclose(adapters[0][k], adapters[1][k], atol=1e-5), k


def test_evaluation_loads_a_checkpoint_like_its_export(tiny_run):
    """``evaluate``/``abtest`` accept a Lightning checkpoint: its policy (LoRA adapters on the named base, merged)
    gives the same logits as the run's merged export."""
    from transformers import AutoModelForCausalLM

    from lightning_post.methods.policy import load_policy

    cwd, run = tiny_run
    ckpt = cwd / "mlruns" / "runs" / run.info.experiment_id / run.info.run_id / "checkpoints" / "last.ckpt"
    model, tok = load_policy(str(ckpt))
    export = AutoModelForCausalLM.from_pretrained(Path(run.data.tags["export_dir"]) / "model")
    ids = tok("Hello there, how are you?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, export(**ids).logits, atol=1e-4)


def test_curve_panels_group_splits_and_skip_missing():
    from lightning_post.callbacks.plots import DEFAULT_CURVES, curve_panels

    history = {"train/loss": [(0, 2.0), (1, 1.0)], "val/loss": [(1, 1.5)], "train/rewards/margins": [(0, 0.1)],
               "val/rewards/accuracies": [], "objective/scores": [(0, 0.5)], "val/scores": [(4, 0.7)]}
    assert curve_panels(history, DEFAULT_CURVES["loss"]) == {"loss": {"train/loss": [(0, 2.0), (1, 1.0)],
                                                                      "val/loss": [(1, 1.5)]}}
    assert curve_panels(history, DEFAULT_CURVES["rewards"]) == {"rewards/margins": {"train/rewards/margins": [(0, 0.1)]}}
    assert curve_panels(history, DEFAULT_CURVES["rl"]) == {"scores": {"objective/scores": [(0, 0.5)],
                                                                      "val/scores": [(4, 0.7)]}}
    assert curve_panels(history, DEFAULT_CURVES["lr"]) == {}
