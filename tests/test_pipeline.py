"""``lightning-post pipeline`` on the tiny model: every stage of configs/pipeline/tiny.yaml feeding the next, one
MLflow parent run with a child per stage and the lineage, a stage failing on a bad data line, and the rerun resuming
there with the earlier stages' exports untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIGS, ROOT
from tests.cli_runner import cli, client


def _pipeline_yaml(cwd: Path, pairs: Path) -> Path:
    """configs/pipeline/tiny.yaml with the DPO stage reading ``pairs``."""
    spec = yaml.safe_load((CONFIGS / "pipeline/tiny.yaml").read_text())
    dpo = next(s for s in spec["stages"] if s["name"] == "dpo")
    dpo["args"] = {**dpo.get("args", {}), "data.init_args.train_files": str(pairs)}
    for stage in spec["stages"]:
        stage["config"] = str(ROOT / stage["config"])
    out = cwd / "pipeline.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def test_bad_descriptions_are_refused_before_anything_runs(tmp_path, monkeypatch):
    from lightning_post.commands.pipeline import Pipeline
    from lightning_post.pipeline import PipelineError

    monkeypatch.chdir(ROOT)
    sft = {"name": "sft", "config": "configs/sft/tiny.yaml"}
    cases = [
        ([sft, {"name": "dpo", "config": "configs/dpo/tiny.yaml", "inputs": {"model.init_args.model_name_or_path":
                                                                             "sfft"}}], "not an earlier stage"),
        ([{"name": "dpo", "config": "configs/dpo/tiny.yaml", "inputs": {"model.init_args.model_name_or_path": "sft"}},
          sft], "not an earlier stage"),
        ([sft, sft], "unique"),
        ([{"name": "sft", "config": "configs/nope.yaml"}], "configs/nope.yaml does not exist"),
        ([{"name": "sft", "config": ["configs/sft/default.yaml", "configs/nope.yaml"]}], "configs/nope.yaml does not exist"),
        ([{"name": "sft", "command": "train", "config": "configs/sft/tiny.yaml"}], "command must be one of"),
    ]
    for stages, message in cases:
        with pytest.raises(PipelineError, match=message):
            Pipeline(stages, output_dir=str(tmp_path / "p"))
    with pytest.raises(PipelineError, match="stop_after: no stage named 'eval'"):
        Pipeline([sft], stop_after="eval")
    assert not (tmp_path / "p").exists()


def test_a_stage_with_a_base_config_and_an_overlay(tmp_path, monkeypatch):
    """``config: [base, overlay]`` passes both to the command in order, and the stage reruns when either changes."""
    import shutil

    from lightning_post.commands.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "sft").mkdir(parents=True)
    for name in ("sft/default.yaml", "sft/jailbreak.yaml"):
        shutil.copy(ROOT / "configs" / name, tmp_path / "configs" / name)
    pipe = Pipeline([{"name": "defense", "config": ["configs/sft/default.yaml", "configs/sft/jailbreak.yaml"]}],
                    output_dir=str(tmp_path / "p"))
    st = pipe.stages[0]
    argv = pipe._argv(st, tmp_path / "p" / "defense", "run0", {})
    assert argv[argv.index("--config"):][:4] == ["--config", "configs/sft/default.yaml", "--config", "configs/sft/jailbreak.yaml"]
    before = pipe._fingerprint(st, {})
    for name in ("sft/jailbreak.yaml", "sft/default.yaml"):
        path = tmp_path / "configs" / name
        path.write_text(path.read_text() + "\n# edited\n")
        after = pipe._fingerprint(st, {})
        assert after != before, name
        before = after


def test_two_pipelines_in_one_process_write_to_their_own_folders_store(tmp_path, monkeypatch):
    """The default ``sqlite:///mlruns/mlflow.db`` is the store of the folder the pipeline runs in, also for a second
    pipeline in the same process after a chdir (MLflow keeps a store per URI string: a relative URI reached the first
    folder's store, and the stages, started in the second folder, could not find their runs)."""
    from lightning_post.commands.pipeline import Pipeline

    stages = [{"name": "sft", "config": str(ROOT / "configs" / "sft/tiny.yaml")}]
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        pipe = Pipeline(stages, output_dir="p", experiment_name="pipe")
        client = pipe._client()
        assert client.get_experiment_by_name("pipe") is None, name  # nothing from the other folder's store
        client.create_experiment("pipe")
        assert (tmp_path / name / "mlruns" / "mlflow.db").is_file()


def test_parent_metrics_name_the_stage_once(tmp_path, monkeypatch):
    """The parent run holds ``<stage>/<metric>``: a command's metrics already under the stage's or the command's name
    (``redteam/attack_success_rate``) are not prefixed twice (they were ``redteam/redteam/...``)."""
    from lightning_post.commands.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    stages = [{"name": "redteam", "command": "redteam"}, {"name": "jailbreak_data", "command": "jailbreak-data"},
              {"name": "attack", "command": "redteam"}, {"name": "sft"}]
    pipe = Pipeline(stages, output_dir=str(tmp_path / "p"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    c = pipe._client()
    parent = pipe._parent_run(c, {})
    child_metrics = {"redteam": {"redteam/attack_success_rate": 0.25, "redteam/asr/role_play": 0.5},
                     "jailbreak_data": {"jailbreak_data/pairs": 6.0}, "attack": {"redteam/attempted": 4.0},
                     "sft": {"train/loss": 1.5, "epoch": 0.0}}
    state = {"stages": {}}
    for name, metrics in child_metrics.items():
        run = c.create_run(c.get_run(parent).info.experiment_id, run_name=name)
        for key, value in metrics.items():
            c.log_metric(run.info.run_id, key, value)
        state["stages"][name] = {"status": "done", "run_id": run.info.run_id, "inputs": {}, "outputs": {},
                                 "seconds": 1.0}
    pipe._log_summary(c, parent, state)
    got = {k: v for k, v in c.get_run(parent).data.metrics.items() if not k.endswith("/seconds")}
    assert got == {"redteam/attack_success_rate": 0.25, "redteam/asr/role_play": 0.5, "jailbreak_data/pairs": 6.0,
                   "attack/attempted": 4.0, "sft/train/loss": 1.5}


@pytest.mark.slow
def test_pipeline_fails_at_a_stage_then_resumes_there(tmp_path):
    # 1. a DPO file with a malformed line 3: the pipeline stops at dpo with sft and reward done
    good = [json.loads(line) for line in (ROOT / "lightning_post/resources/preferences.jsonl").open()][:24]
    pairs = tmp_path / "pairs.jsonl"
    bad = good[:2] + [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "large"}] + good[2:]
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bad), encoding="utf-8")
    config = _pipeline_yaml(tmp_path, pairs)
    first = cli(["pipeline", "--config", str(config)], tmp_path, check=False)
    assert first.returncode != 0
    assert "stage dpo failed" in first.stderr and "resume at dpo" in first.stderr
    assert "pairs.jsonl:3: field 'margin'" in first.stdout  # the stage's own error, shown and kept in stage.log
    out = tmp_path / "mlruns/pipelines/tiny"
    assert "pairs.jsonl:3: field 'margin'" in (out / "dpo/stage.log").read_text()
    state = json.loads((out / "state.json").read_text())
    assert {k: v["status"] for k, v in state["stages"].items()} == {"sft": "done", "reward": "done", "dpo": "failed"}
    sft_model = Path(state["stages"]["sft"]["outputs"]["model"])
    assert (sft_model / "config.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in sft_model.iterdir()}
    mlf = client(tmp_path)
    exp = mlf.get_experiment_by_name("pipeline").experiment_id
    parent = mlf.get_run(state["parent_run_id"])
    assert parent.info.status == "FAILED"
    assert mlf.get_run(state["stages"]["dpo"]["run_id"]).info.status == "FAILED"

    # 2. the file fixed, the same command resumes at dpo and runs to the end
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good), encoding="utf-8")
    second = cli(["pipeline", "--config", str(config)], tmp_path)
    assert "sft: done in run" in second.stdout and "reward: done in run" in second.stdout
    assert "[pipeline 3/7] dpo: fit" in second.stdout and "sft: fit" not in second.stdout
    after = json.loads((out / "state.json").read_text())
    assert after["parent_run_id"] == state["parent_run_id"]
    assert all(v["status"] == "done" for v in after["stages"].values()) and len(after["stages"]) == 7
    assert after["stages"]["sft"]["run_id"] == state["stages"]["sft"]["run_id"]
    assert {p: p.stat().st_mtime_ns for p in sft_model.iterdir()} == kept  # the sft export was not rewritten

    # 3. MLflow: the parent with one child per stage (and the failed dpo attempt), each with its lineage
    parent = mlf.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.resumes"] == "1"
    children = mlf.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_status = sorted((r.info.run_name, r.info.status) for r in children)
    assert by_status == sorted([(s, "FINISHED") for s in ("sft", "reward", "dpo", "ppo", "cai", "evaluate", "abtest")]
                               + [("dpo", "FAILED")])
    runs = {r.info.run_name: r for r in children if r.info.status == "FINISHED"}
    ppo = runs["ppo"].data.tags
    assert ppo["lineage.model.init_args.reward_model"] == \
        f"reward {runs['reward'].info.run_id} {after['stages']['reward']['outputs']['model']}"
    assert ppo["lineage.model.init_args.model_name_or_path"].startswith(f"dpo {runs['dpo'].info.run_id} ")
    assert runs["abtest"].data.tags["lineage.model_b"].startswith(f"cai {runs['cai'].info.run_id} ")
    # each training stage logged into its child run, and the parent holds every stage's final metrics
    assert "train/loss" in runs["dpo"].data.metrics and "eval/knowledge/acc" in runs["evaluate"].data.metrics
    assert parent.data.metrics["dpo/train/loss"] == runs["dpo"].data.metrics["train/loss"]
    assert parent.data.metrics["abtest/ab/n"] == runs["abtest"].data.metrics["ab/n"]
    lineage = json.loads(Path(mlf.download_artifacts(parent.info.run_id, "lineage.json", str(tmp_path))).read_text())
    assert [s["stage"] for s in lineage] == ["sft", "reward", "dpo", "ppo", "cai", "evaluate", "abtest"]
    assert lineage[4]["inputs"]["model.init_args.model_name_or_path"]["run_id"] == runs["ppo"].info.run_id
    # metric names are shared across methods, so the children compare side by side
    for name in ("sft", "reward", "dpo", "ppo", "cai"):
        assert {"train/loss", "train/lr", "train/grad_norm"} <= set(runs[name].data.metrics), name
    for name in ("reward", "dpo"):
        assert {"val/rewards/accuracies", "val/rewards/margins", "val/rewards/chosen", "val/rewards/rejected"} <= \
            set(runs[name].data.metrics), name
    # each child holds its plots, each training child its MLflow model
    assert "plots/reward_distribution.png" in {a.path for a in mlf.list_artifacts(runs["dpo"].info.run_id, "plots")}
    assert "plots/rl.png" in {a.path for a in mlf.list_artifacts(runs["ppo"].info.run_id, "plots")}
    assert "plots/verdicts.png" in {a.path for a in mlf.list_artifacts(runs["abtest"].info.run_id, "plots")}
    for name in ("sft", "reward", "dpo", "ppo", "cai"):
        assert runs[name].data.tags["mlflow_model_id"].startswith("m-"), name
    # the evaluation read the CAI export
    report = json.loads(Path(after["stages"]["evaluate"]["outputs"]["report"]).read_text())
    assert report["model"] == after["stages"]["cai"]["outputs"]["model"]

    # 4. nothing left to do: a third run skips every stage and creates no run
    third = cli(["pipeline", "--config", str(config)], tmp_path)
    assert third.stdout.count("skipped") == 7
    assert len(mlf.search_runs([exp])) == len(children) + 1
    shutil.rmtree(out / "evaluate/output")  # a missing output reruns its stage (and only it)
    fourth = cli(["pipeline", "--config", str(config), "--restart_from", "abtest"], tmp_path)
    assert fourth.stdout.count("skipped") == 5 and "evaluate: evaluate" in fourth.stdout


@pytest.mark.slow  # several processes
def test_sigterm_stops_the_running_stage_and_records_it(tmp_path):
    """A scheduler's SIGTERM (preemption) while a stage runs: the stage's process is stopped, the stage is recorded
    as interrupted, its child run and the parent as KILLED, and the exit code is non-zero."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = {"name": "term", "output_dir": "mlruns/pipelines/term", "stages": [
        {"name": "sft", "config": str(CONFIGS / "sft/tiny.yaml"), "args": {"trainer.max_steps": 400}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "lightning_post.cli", "pipeline", "--config", "p.yaml"],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "mlruns/pipelines/term/sft/stage.log"
    deadline = time.time() + 300
    while time.time() < deadline and "trainable of" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)  # the model is built: the stage's process is training
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    state = json.loads((tmp_path / "mlruns/pipelines/term/state.json").read_text())
    assert state["stages"]["sft"]["status"] == "failed" and state["stages"]["sft"]["error"] == "interrupted"
    mlf = client(tmp_path)
    assert mlf.get_run(state["stages"]["sft"]["run_id"]).info.status == "KILLED"
    assert mlf.get_run(state["parent_run_id"]).info.status == "KILLED"
    ps = subprocess.run(["pgrep", "-f", state["stages"]["sft"]["run_id"]], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # no stage process left behind
