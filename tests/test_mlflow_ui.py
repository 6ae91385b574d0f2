"""The MLflow UI, in a real headless Chromium (Debian's package, installed by ``scripts/setup.sh`` through
``scripts/setup_browser.sh``; without it the tests are skipped, nothing is installed here): after a pipeline on the
tiny model, ``mlflow ui`` shows the experiment's parent run with its child runs, their logged models, the parent's
and children's metrics with their values, and the lineage tags; two plain fits with the same seed show distinct
readable names and their datasets in the runs table, and the comparison view holds both runs' ``train/loss``.
Screenshots of the runs tables and the comparison are saved. Runs are found by their visible names in the grid's rows
and cells, controls by their ARIA role and accessible name (no build-generated class names or component ids)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.browser import BINARIES, Browser, find_chromium, row_of
from tests.conftest import CONFIGS, write_jsonl
from tests.cli_runner import cli, client

pytestmark = pytest.mark.slow


def js_number(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's shortest round-trip form: 108, not 108.0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def close_assistant(browser: Browser) -> None:
    """Close the MLflow Assistant side panel (its only ``Close`` button) if it is open, so screenshots show the page."""
    if browser.click("button", name="Close"):
        time.sleep(1)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system's headless Chromium, found on PATH; never installed here (``scripts/setup.sh`` does that)."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no headless Chromium on PATH ({' or '.join(BINARIES)}); install it with "
                    "`bash scripts/setup_browser.sh` (needs root or password-less sudo, apt and the network)")
    return binary


def compared_metrics(text: str, runs: int) -> dict[str, list[str]]:
    """The comparison page's metrics table, from the page's text: the metric names come first, then each metric's
    values, one per run in the order of the page's columns."""
    start = text.rindex("Metrics\nShow diff only\n") + len("Metrics\nShow diff only\n")
    lines = text[start:text.index("\nArtifacts", start)].split("\n")
    n = len(lines) // (runs + 1)
    names, values = lines[:n], lines[n:]
    return {name: values[i * runs:(i + 1) * runs] for i, name in enumerate(names)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A two-stage pipeline (SFT -> DPO from its export) on the tiny model in a fresh store, then two plain fits
    with the same seed (experiment ``sft``): the bundled data and a file of 16 records."""
    cwd = tmp_path_factory.mktemp("ui")
    spec = {"name": "ui-pipeline", "output_dir": "mlruns/pipelines/ui", "stages": [
        {"name": "sft", "config": str(CONFIGS / "sft/tiny.yaml")},
        {"name": "dpo", "config": str(CONFIGS / "dpo/tiny.yaml"),
         "inputs": {"model.init_args.model_name_or_path": "sft"}}]}
    (cwd / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    cli(["pipeline", "--config", str(cwd / "pipeline.yaml")], cwd)
    small = write_jsonl(cwd / "small.jsonl", [{"instruction": f"Say {w} {n} times.", "input": "",
                                               "response": " ".join([w] * n)}
                                              for n, w in zip(range(1, 17), ["cat", "dog", "sun", "sky"] * 4)])
    quick = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--samples.enabled", "false",
             "--export.enabled", "false"]
    cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), *quick], cwd)
    cli(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), *quick, "--data.init_args.train_files", str(small)], cwd)
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
        browser.wait_for_text("3 matching runs")
        assert len(browser.wait_for_rows("ui-pipeline")) == 1  # the child runs are folded under their parent
        # the parent's name cell holds one button beside the name: the +/- that unfolds its child runs
        assert browser.click("button", cell="ui-pipeline") == 1
        rows = browser.wait_for_rows("dpo", "sft")
        assert row_of(rows, "ui-pipeline") < row_of(rows, "dpo") < row_of(rows, "sft")  # under the parent, newest first
        close_assistant(browser)
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


def test_mlflow_ui_compares_two_fits_by_their_names_and_datasets(chromium, store, ui, tmp_path):
    mlf = client(store)
    exp = mlf.get_experiment_by_name("sft")
    runs = sorted(mlf.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert len(runs) == 2 and runs[0].info.run_name != runs[1].info.run_name  # same seed, two names
    names = [r.info.run_name for r in runs]
    datasets = [f"{r.inputs.dataset_inputs[0].dataset.name} ({r.inputs.dataset_inputs[0].dataset.digest})"
                for r in runs]
    assert datasets[0].startswith("instructions.jsonl (") and datasets[1].startswith("small.jsonl (")
    with Browser() as browser:
        # 1. the runs table: each fit by its readable name, with the file it trained on and that file's digest
        browser.open(f"{ui}/#/experiments/{exp.experiment_id}/runs")
        browser.wait_for_text("2 matching runs", *names, *datasets)
        rows = browser.wait_for_rows(*names)
        for name, dataset in zip(names, datasets):  # each run's row: its name, its dataset, the dataset's context
            cells = rows[row_of(rows, name)].split("\n")
            assert dataset in cells and "Train,Val" in cells, (name, cells)  # training, and validation held out of it
        close_assistant(browser)
        print(f"screenshot: {browser.screenshot(tmp_path / 'mlflow-fits.png')}")
        # 2. the comparison view of the two runs: their names, and train/loss of each
        ids = [r.info.run_id for r in runs]
        browser.open(f"{ui}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
                     f"&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}")
        page = browser.wait_for_text("Comparing 2 Runs", "Metrics\nShow diff only", *names)
        details = page[page.index("Run details"):]
        assert details.index(names[0]) < details.index(names[1])  # columns in the order of the address
        shown = compared_metrics(page, 2)
        assert len(shown["train/loss"]) == 2, shown
        for value, run in zip(shown["train/loss"], runs):  # the UI rounds to a few digits
            assert float(value) == pytest.approx(run.data.metrics["train/loss"], rel=1e-3), (value, run.info.run_name)
        close_assistant(browser)
        print(f"screenshot: {browser.screenshot(tmp_path / 'mlflow-compare.png')}")
