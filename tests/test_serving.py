"""A logged model serves: ``mlflow models serve -m models:/<id> --env-manager local`` answers a real HTTP POST on
127.0.0.1 for a merged chat model (parrot A, whose greedy answers are known) and a reward model, each the same as the
model loaded directly; the logged requirements are packages an index has, and the package's code travels along."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.planted import TEXT

pytestmark = pytest.mark.slow  # starts an MLflow model server per model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_model(tmp_path: Path, written: dict, base: str, task: str) -> tuple[str, str]:
    from mlflow import MlflowClient

    from lightning_post.serving import log_exported_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(f"serve-{task}"))
    return uri, log_exported_model(uri, run.info.run_id, written, base, task)


def serve_and_post(uri: str, model_id: str, inputs: list, cwd: Path) -> list:
    """Start ``mlflow models serve`` for ``models:/<model_id>``, POST ``inputs`` to ``/invocations``, stop the server
    by its process group; returns the predictions."""
    port = free_port()
    # the server starts `uvicorn` by name: the venv's bin must be on PATH even when the venv is not activated (CI)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(cwd / f"serve-{port}.log", "w")
    proc = subprocess.Popen([str(mlflow), "models", "serve", "-m", f"models:/{model_id}", "-h", "127.0.0.1", "-p",
                             str(port), "--env-manager", "local"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError((cwd / f"serve-{port}.log").read_text()[-3000:])
                time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": inputs}).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers, by process id
        except ProcessLookupError:  # it already stopped (its log is in the assertion above)
            pass
        proc.wait(timeout=60)
        log.close()


@pytest.fixture
def tracking(monkeypatch):
    """Restore MLflow's tracking URI after the test (``models:/<id>`` resolves against the current one)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    yield mlflow
    mlflow.set_tracking_uri(previous)


def test_a_logged_chat_model_serves_its_answers(tmp_path, parrot_a, tracking):
    from importlib.metadata import version

    mlflow = tracking
    uri, model_id = log_model(tmp_path, {"model": parrot_a}, "tiny-llama", "chat")
    mlflow.set_tracking_uri(uri)
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "logged")))
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"torch=={version('torch').split('+')[0]}" in requirements
    assert not [r for r in requirements if r.startswith("lightning-post") or "+" in r], requirements
    assert (folder / "code" / "lightning_post" / "serving.py").exists()
    assert not list((folder / "code").rglob("__pycache__"))
    prompts = [t["prompt"] for t in TEXT]
    served = serve_and_post(uri, model_id, prompts, tmp_path)
    assert served == [t["a"] for t in TEXT]  # the planted answers, Korean included
    direct = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(prompts)
    assert served == direct


def test_a_logged_reward_model_serves_its_scores(tmp_path, tracking):
    import torch

    from lightning_post.callbacks.export import export_model
    from lightning_post.methods.reward import RewardModule
    from lightning_post.scoring.rewards import RewardModelScorer

    module = RewardModule("tiny-llama")
    module.configure_model()
    torch.manual_seed(3)
    with torch.no_grad():  # a score head that tells replies apart
        for name, p in module.model.named_parameters():
            if "score" in name:
                p.normal_(0, 1.0)
    written = export_model(module, tmp_path / "export")
    uri, model_id = log_model(tmp_path, written, "tiny-llama", "score")
    tracking.set_tracking_uri(uri)
    records = [{"prompt": "What is 2+2?", "response": "4"}, {"prompt": "What is 2+2?", "response": "Five, I think."},
               {"prompt": "서울은 어느 나라의 수도입니까?", "response": "대한민국입니다."}]
    served = serve_and_post(uri, model_id, records, tmp_path)
    scorer = RewardModelScorer(written["model"], "chat")
    direct = scorer.score([{"prompt": [{"role": "user", "content": r["prompt"]}], "raw_prompt": r["prompt"]}
                           for r in records], [r["response"] for r in records], torch.device("cpu")).tolist()
    assert served == pytest.approx(direct, abs=1e-5)
    assert len(set(round(x, 4) for x in served)) == 3  # three different scores: the pairs were not mixed up
    assert served == pytest.approx(tracking.pyfunc.load_model(f"models:/{model_id}").predict(records), abs=1e-6)
