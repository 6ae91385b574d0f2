"""The MLflow UI, in a real headless Chromium (Debian's package, installed by ``scripts/setup_browser.sh`` when
missing): after a pipeline on the tiny model, ``mlflow ui`` shows the experiment's parent run with its child runs,
their logged models, the parent's and children's metrics with their values, and the lineage tags; a screenshot of
the runs table is saved."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.browser import Browser, find_chromium
from tests.conftest import CONFIGS, ROOT
from tests.test_cli import cli, client

pytestmark = pytest.mark.slow
EXPAND = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'  # the +/- beside a parent run's name
CLOSE_ASSISTANT = '[data-component-id="mlflow.assistant.chat_panel.close"]'


def js_number(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's shortest round-trip form: 108, not 108.0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@pytest.fixture(scope="module")
def chromium() -> str:
    if find_chromium() is None:
        subprocess.run(["bash", str(ROOT / "scripts/setup_browser.sh")], check=True, timeout=900)
    binary = find_chromium()
    assert binary, "scripts/setup_browser.sh did not install Chromium"
    return binary


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A two-stage pipeline (SFT -> DPO from its export) on the tiny model in a fresh store."""
    cwd = tmp_path_factory.mktemp("ui")
    spec = {"name": "ui-pipeline", "output_dir": "mlruns/pipelines/ui", "stages": [
        {"name": "sft", "config": str(CONFIGS / "tiny.yaml")},
        {"name": "dpo", "config": str(CONFIGS / "tiny_dpo.yaml"),
         "inputs": {"model.init_args.model_name_or_path": "sft"}}]}
    (cwd / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    cli(["pipeline", "--config", str(cwd / "pipeline.yaml")], cwd)
    return cwd


@pytest.fixture(scope="module")
def ui(store):
    """``mlflow ui`` on a free local port, serving the store; yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(store / "mlflow-ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                             f"sqlite:///{store}/mlruns/mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=store, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow ui did not start:\n{(store / 'mlflow-ui.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_mlflow_ui_shows_parent_and_child_runs_with_metrics(chromium, store, ui, tmp_path):
    mlf = client(store)
    exp = mlf.get_experiment_by_name("pipeline")
    runs = {r.info.run_name: r for r in mlf.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["dpo", "sft", "ui-pipeline"]
    parent, dpo = runs["ui-pipeline"], runs["dpo"]
    with Browser() as browser:
        # 1. the runs table: the parent run, expanded to its two child runs
        browser.open(f"{ui}/#/experiments/{exp.experiment_id}/runs")
        browser.wait_for_text("ui-pipeline", "3 matching runs")
        assert browser.click_all(EXPAND) == 1  # one parent row has an expander
        table = browser.wait_for_text("sft", "dpo")
        rows = table[table.index("ui-pipeline"):]
        assert rows.index("dpo") < rows.index("sft")  # children under the parent, newest first
        browser.click_all(CLOSE_ASSISTANT)
        time.sleep(1)
        shot = browser.screenshot(tmp_path / "mlflow-runs.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")
        # 2. the parent's page: every stage's final metrics with their values, and its child runs
        browser.open(f"{ui}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}")
        page = browser.wait_for_text("dpo/train/loss", "sft/val/loss")
        for key in ("dpo/train/loss", "dpo/val/rewards/margins", "sft/train/loss", "dpo/seconds"):
            assert f"{key}\n{js_number(parent.data.metrics[key])}" in page, key
        # 3. a child's page: its metrics, its parent, its lineage and its logged model
        browser.open(f"{ui}/#/experiments/{exp.experiment_id}/runs/{dpo.info.run_id}")
        page = browser.wait_for_text("val/rewards/accuracies", "ui-pipeline")
        for key in ("train/loss", "val/loss", "val/rewards/accuracies", "train/rewards/margins"):
            assert f"{key}\n{js_number(dpo.data.metrics[key])}" in page, key
        assert f"lineage.model.init_args.model_name_or_path\n: sft {runs['sft'].info.run_id}" in page
        browser.screenshot(tmp_path / "mlflow-dpo-run.png")
        # 4. the experiment's models: the MLflow models the two training stages logged
        browser.open(f"{ui}/#/experiments/{exp.experiment_id}/models")
        models = browser.wait_for_text("Ready", "dpo", "sft")
        assert models.count("Ready") == 2  # one logged model per training stage, named after its source run
        browser.screenshot(tmp_path / "mlflow-models.png")
