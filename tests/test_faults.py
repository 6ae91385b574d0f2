"""Fault injection: nothing a user wrote is deleted, nothing half-written is left, and a stopped run can be resumed.

Each case plants a real fault (a user's file in an output folder, ``kill -9`` mid-fit, SIGINT, a truncated
checkpoint, a corrupt ``state.json``) and checks the outcome on disk and in a real MLflow store.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, ROOT, write_jsonl

EXE = [sys.executable, "-m", "lightning_post.cli"]


def runs_in(cwd: Path) -> list:
    """Every run of the SQLite store under ``cwd`` (none when the store was never created)."""
    db = cwd / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    return c.search_runs(ids) if ids else []


def user_folder(path: Path) -> Path:
    """A folder holding a user's own file (what a writer must never delete)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("my notes\n")
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """``lightning-post <argv>`` in this process: (exit code, stderr)."""
    import logging

    from lightning_post.cli import main

    handlers = list(logging.getLogger().handlers)  # main's basicConfig binds a handler to this test's stderr
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        logging.getLogger().handlers = handlers
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- output folders --------------------------------
def test_write_folder_keeps_a_users_files_and_replaces_only_its_own(tmp_path, monkeypatch):
    from lightning_post.errors import OutputError
    from lightning_post.outputs import MARKER, write_folder

    monkeypatch.chdir(tmp_path)
    out = user_folder(tmp_path / "reports")
    with pytest.raises(OutputError, match="already holds files written by a user"):
        write_folder(out, {"report.json": {"a": 1}}, "evaluate")
    assert (out / "notes.txt").read_text() == "my notes\n" and not (out / "report.json").exists()
    # --overwrite writes beside the user's file
    write_folder(out, {"report.json": {"a": 1}, "rows.jsonl": [{"x": 1}]}, "evaluate", overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes\n" and json.loads((out / "report.json").read_text()) == {"a": 1}
    # a rerun replaces its own files (rows.jsonl is gone from the new output) and keeps the user's
    write_folder(out, {"report.json": {"a": 2}}, "evaluate")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "notes.txt", "report.json"])
    # an output of another command is not taken over
    with pytest.raises(OutputError, match="written by 'evaluate'"):
        write_folder(out, {"report.json": {}}, "abtest")
    # a clean previous output is swapped whole
    clean = tmp_path / "clean"
    write_folder(clean, {"a.json": 1, "plots/p.txt": "x"}, "redteam")
    write_folder(clean, {"b.json": 2}, "redteam")
    assert sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*")) == [MARKER, "b.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


@pytest.mark.parametrize("target", [".", "", "..", "/"])
def test_the_working_directory_and_its_parents_are_refused(tmp_path, monkeypatch, target):
    from lightning_post.errors import OutputError
    from lightning_post.outputs import write_folder

    work = user_folder(tmp_path / "work")
    monkeypatch.chdir(work)
    with pytest.raises(OutputError, match="working directory|home folder"):
        write_folder(Path(target or "."), {"report.json": {}}, "evaluate", overwrite=True)
    assert (work / "notes.txt").exists()


def test_outputs_get_the_users_umask(tmp_path, monkeypatch):
    """``tempfile.mkdtemp`` makes 0700: the moved folder must read like any ``mkdir`` under umask 022."""
    from lightning_post.outputs import write_folder

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        out = write_folder(tmp_path / "r", {"report.json": {}, "plots/a.txt": "x"}, "evaluate")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "plots").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "report.json").stat().st_mode) == 0o644


COMMAND_CONFIGS = [
    (["evaluate", "--config", str(CONFIGS / "evaluate/tiny.yaml")], "--output_dir"),
    (["abtest", "--config", str(CONFIGS / "abtest/tiny.yaml")], "--output_dir"),
    (["redteam", "--config", str(CONFIGS / "redteam/tiny.yaml")], "--output_dir"),
    (["jailbreak-data", "--config", str(CONFIGS / "jailbreak_data/tiny.yaml")], "--output_dir"),
    (["data", "report", "--config", str(CONFIGS / "data/report.yaml")], "--output_dir"),
]


@pytest.mark.parametrize("argv,flag", COMMAND_CONFIGS, ids=lambda v: v[0] if isinstance(v, list) else "")
def test_every_folder_command_refuses_a_users_folder_before_any_work(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(ROOT)  # the configs name bundled files by paths from the repository root
    out = user_folder(tmp_path / "out")
    code, err = run_main(argv + [f"{flag}={out}", f"--tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db"], capsys)
    assert code == 2 and "already holds files written by a user" in err, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert runs_in(tmp_path) == []
    code, err = run_main(argv + [f"{flag}=.", f"--tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db"], capsys)
    assert code == 2 and "is the working directory" in err


def test_feedback_converter_refuses_a_users_folder_and_the_working_directory(tmp_path, monkeypatch, capsys):
    from lightning_post.feedback_cli import main

    events = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "hi", "response": "hello", "rating": 5}])
    out = user_folder(tmp_path / "out")
    assert main([str(events), "--out-dir", str(out), "--no-mlflow"]) == 2
    assert "already holds files written by a user" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    work = user_folder(tmp_path / "work")
    monkeypatch.chdir(work)
    assert main([str(events), "--out-dir", ".", "--no-mlflow"]) == 2
    assert "is the working directory" in capsys.readouterr().err and (work / "notes.txt").exists()


def test_export_refuses_a_users_folder_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = user_folder(tmp_path / "export")
    code, err = run_main(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), f"--export.dirpath={out}"], capsys)
    assert code == 2 and "export.dirpath" in err and "already holds files" in err, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and runs_in(tmp_path) == []


@pytest.mark.parametrize("name", ["..", ".", "a/b", ""])
def test_pipeline_stage_names_stay_inside_output_dir(tmp_path, name):
    from lightning_post.commands.pipeline import Pipeline
    from lightning_post.pipeline import PipelineError

    with pytest.raises(PipelineError, match="must be a plain folder name"):
        Pipeline([{"name": name, "command": "fit", "config": str(CONFIGS / "sft/tiny.yaml")}],
                 output_dir=str(tmp_path / "p"))


def test_corrupt_pipeline_state_is_named(tmp_path):
    from lightning_post.commands.pipeline import Pipeline
    from lightning_post.pipeline import PipelineError

    out = tmp_path / "p"
    out.mkdir()
    (out / "state.json").write_text('{"parent_run_id": "x", "stages": {"sft": {"status": "do')  # cut by a crash
    pipe = Pipeline([{"name": "sft", "command": "fit", "config": str(CONFIGS / "sft/tiny.yaml")}], output_dir=str(out))
    with pytest.raises(PipelineError, match=r"state\.json: corrupt \(.*\); restore it, or delete it"):
        pipe._load_state()


# ---------------------------------------------------------------- checkpoints ------------------------------------
def test_checkpoint_path_problems_stop_before_the_run(tmp_path, monkeypatch, capsys):
    """A missing, truncated or other method's checkpoint: one line naming ``ckpt_path``, and no MLflow run."""
    monkeypatch.chdir(tmp_path)
    base = ["test", "--config", str(CONFIGS / "sft/tiny.yaml")]
    code, err = run_main(base + ["--ckpt_path", str(tmp_path / "none.ckpt")], capsys)
    assert code == 2 and f"ckpt_path: {tmp_path / 'none.ckpt'} does not exist" in err
    good = tmp_path / "dpo.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(3)}, "hyper_parameters": {"model_name_or_path": "tiny-llama"},
                "lightning_post": {"class": "lightning_post.methods.dpo.DPOModule"}}, good)
    code, err = run_main(base + ["--ckpt_path", str(good)], capsys)
    assert code == 2 and "was written by DPOModule, but the config's model is SFTModule" in err, err[-2000:]
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, err = run_main(base + ["--ckpt_path", str(cut)], capsys)
    assert code == 2 and f"{cut} is not a complete checkpoint (truncated or corrupt" in err, err[-2000:]
    assert runs_in(tmp_path) == [] and not (tmp_path / "mlruns" / "runs").exists()


def _fit_cmd(cwd: Path, *extra: str) -> list[str]:
    return EXE + ["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--trainer.max_steps=8",
                  "--trainer.val_check_interval=4", "--trainer.callbacks+=tests.helpers.SlowSteps",
                  "--trainer.callbacks.seconds=0.6", "--samples.enabled=false", "--export.log_model=false", *extra]


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pattern: str, cwd: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted((cwd / "mlruns" / "runs").glob(pattern)) if (cwd / "mlruns" / "runs").exists() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"the fit ended (exit {proc.returncode}) before {pattern} appeared:\n"
                                 f"{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


def _losses(run) -> dict[int, float]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=run[0])
    return {m.step: m.value for m in c.get_metric_history(run[1], "train/loss")}


@pytest.mark.slow  # several processes
def test_kill_9_mid_fit_leaves_a_checkpoint_that_resumes_like_a_continuous_run(tmp_path):
    """``kill -9`` after the first periodic checkpoint: ``last.ckpt`` is whole and at most N=2 steps old, the run left
    RUNNING is marked KILLED by the next command, and resuming gives the continuous run's losses."""
    from lightning_post.tracking import mark_stale_runs

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = _start(_fit_cmd(killed), killed)
    ckpt = _wait_for("*/*/checkpoints/last.ckpt", killed, proc)
    time.sleep(0.3)  # in the middle of step 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] in (2, 4, 6) and saved["lightning_post"]["class"].endswith("SFTModule")
    assert not list(ckpt.parent.glob("*.tmp"))
    (run,) = runs_in(killed)
    assert run.info.status == "RUNNING"
    uri = f"sqlite:///{killed}/mlruns/mlflow.db"
    assert mark_stale_runs(uri) == [run.info.run_id]
    assert runs_in(killed)[0].info.status == "KILLED"
    # resume (the README's command) and an uninterrupted run in the same store
    for args in (["--ckpt_path", str(ckpt)], []):
        out = subprocess.run(_fit_cmd(killed, "--trainer.callbacks.seconds=0", *args), cwd=killed, capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
    runs = sorted(runs_in(killed), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED", "FINISHED"]
    resumed, continuous = (_losses((uri, r.info.run_id)) for r in runs[1:])
    step = saved["global_step"]
    assert sorted(resumed) == list(range(step, 8)) and sorted(continuous) == list(range(8))
    for s in resumed:
        assert resumed[s] == pytest.approx(continuous[s], abs=1e-5), s


@pytest.mark.slow  # several processes
def test_sigint_saves_a_checkpoint_and_the_export_and_exits_130(tmp_path):
    proc = _start(_fit_cmd(tmp_path), tmp_path)
    _wait_for("*/*/checkpoints/last.ckpt", tmp_path, proc)  # step 2 is done: the run is training
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    assert "stopping after this step" in out
    (run,) = runs_in(tmp_path)
    assert run.info.status == "KILLED"
    ckpt = next((tmp_path / "mlruns" / "runs").glob("*/*/checkpoints/last.ckpt"))
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 2 < step < 8  # the step after the signal, not the periodic one before it
    export = ckpt.parents[1] / "export"
    assert (export / "model" / "config.json").is_file() and (export / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow  # several processes
def test_kill_9_of_the_pipeline_stops_its_stage_which_logs_to_stage_log(tmp_path):
    """The stage process writes ``stage.log`` itself and dies with its pipeline (SIGTERM from the kernel, then the
    graceful stop: a checkpoint and exit 130), instead of running on orphaned with its output lost."""
    import yaml

    spec = {"name": "p", "output_dir": str(tmp_path / "out"), "stages": [{
        "name": "sft", "config": str(CONFIGS / "sft/tiny.yaml"),
        "args": {"trainer.max_steps": 40, "trainer.val_check_interval": 40, "samples.enabled": False,
                 "export.log_model": False, "trainer.callbacks+": "tests.helpers.SlowSteps",
                 "trainer.callbacks.seconds": 0.5}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    pipe = _start(EXE + ["pipeline", "--config", str(tmp_path / "p.yaml")], tmp_path)
    stage_dir = tmp_path / "out" / "sft"
    deadline = time.time() + 240
    while not list(stage_dir.rglob("last.ckpt")):  # the stage is training
        assert time.time() < deadline and pipe.poll() is None, pipe.stdout.read()[-3000:]
        time.sleep(0.1)
    stage_pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and str(stage_dir) in
                     (p / "cmdline").read_bytes().decode(errors="replace"))
    pipe.send_signal(signal.SIGKILL)
    pipe.wait()
    deadline = time.time() + 120
    while Path(f"/proc/{stage_pid}").exists() and b"zombie" not in Path(f"/proc/{stage_pid}/status").read_bytes() \
            .lower():
        assert time.time() < deadline, "the stage outlived its pipeline"
        time.sleep(0.2)
    log = (stage_dir / "stage.log").read_text()
    assert "SIGTERM: stopping after this step" in log and "stopped by a signal at step" in log, log[-3000:]


@pytest.mark.skipif(not hasattr(os, "seteuid") or os.geteuid() != 0, reason="needs root to act as another user")
def test_a_read_only_tracking_store_is_refused_before_the_run(tmp_path):
    """MLflow retries a store it cannot write for minutes; the logger refuses it at once, naming the setting. Root
    writes anywhere, so the check runs as ``nobody`` (effective uid) on a real read-only folder."""
    import tempfile

    from lightning_post.errors import ConfigError
    from lightning_post.tracking import check_store_writable

    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        store = base / "mlruns"
        store.mkdir(mode=0o555)
        uri = f"sqlite:///{store}/mlflow.db"
        os.seteuid(65534)
        try:
            with pytest.raises(ConfigError, match=rf"tracking_uri: {store} is not writable by this user"):
                check_store_writable(uri, str(base / "artifacts"))
        finally:
            os.seteuid(0)
        check_store_writable(uri, str(base / "artifacts"))  # root may write there: no error
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
