"""MLflow runs users can tell apart and trace: a readable, unique run name whatever the seed (``run_name`` from the
YAML or the command line wins), the data files as dataset inputs (source, digest, rows), setup counts as params."""

from __future__ import annotations

import json
import random
import re

import pytest
import yaml

from tests.conftest import CONFIGS, write_jsonl
from tests.cli_runner import client

NAME = re.compile(r"^sft-\d{6}-\d{6}-tiny-llama-[0-9a-f]{4}$")
QUICK = ["--trainer.max_steps", "1", "--trainer.val_check_interval", "1", "--samples.enabled", "false",
         "--plots.enabled", "false", "--export.enabled", "false"]


def test_default_names_are_readable_and_ignore_the_seed():
    from lightning_post.tracking import default_run_name, model_label

    names = set()
    for _ in range(2):
        random.seed(0)  # what seed_everything does before MLflow would draw its random name
        names.add(default_run_name("sft", model_label("HuggingFaceTB/SmolLM2-135M-Instruct")))
    assert len(names) == 2
    assert all(re.fullmatch(r"sft-\d{6}-\d{6}-smollm2-135m-instruct-[0-9a-f]{4}", n) for n in names), names
    assert model_label("/abs/mlruns/pipelines/demo/dpo/export/model") == "dpo"
    assert model_label("C:\\runs\\My Model!\\last.ckpt") == "my-model"


def test_file_digest_follows_the_contents(tmp_path):
    from lightning_post.tracking import file_digest

    a = tmp_path / "a.jsonl"
    a.write_text('{"x": 1}\n')
    first = file_digest(a)
    assert re.fullmatch(r"[0-9a-f]{16}", first) and file_digest(a) == first
    a.write_text('{"x": 2}\n')
    assert file_digest(a) != first


def _fit(args: list[str]) -> None:
    from lightning_post.trainer_cli import cli_main

    cli_main(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), *QUICK, *args])


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """Three in-process fits with seed 0 in one store: the bundled data, a file of 16 records, a named run."""
    import os

    cwd = tmp_path_factory.mktemp("names")
    records = [{"instruction": f"Say {w} {n} times.", "input": "", "response": " ".join([w] * n)}
               for n, w in zip(range(1, 17), ["cat", "dog", "sun", "sky"] * 4)]
    data = write_jsonl(cwd / "small.jsonl", records)
    here = os.getcwd()
    os.chdir(cwd)
    try:
        _fit([])
        _fit(["--data.init_args.train_files", str(data), "--data.init_args.val_files", str(data)])
        _fit(["--trainer.logger.init_args.run_name", "my-named-run"])
    finally:
        os.chdir(here)
    c = client(cwd)
    runs = sorted(c.search_runs([c.get_experiment_by_name("sft").experiment_id]), key=lambda r: r.info.start_time)
    return cwd, data, runs


def test_same_seed_fits_get_different_readable_names(fits):
    _, _, (bundled, small, named) = fits
    assert bundled.data.params["seed_everything"] == small.data.params["seed_everything"] == "0"
    assert NAME.match(bundled.info.run_name) and NAME.match(small.info.run_name), (bundled.info.run_name,
                                                                                  small.info.run_name)
    assert bundled.info.run_name != small.info.run_name
    assert named.info.run_name == "my-named-run"  # from the command line


def test_each_fit_logs_its_data_files_as_mlflow_datasets(fits):
    from lightning_post.records.files import default_instruction_file
    from lightning_post.tracking import file_digest

    cwd, data, (bundled, small, _) = fits
    inputs = client(cwd).get_run(small.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1  # train and val read the same file: one dataset, both contexts
    ds = inputs[0].dataset
    assert (ds.name, json.loads(ds.source), ds.source_type) == ("small.jsonl", {"uri": str(data.resolve())}, "local")
    assert ds.digest == file_digest(data) and json.loads(ds.profile) == {"rows": 16}
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train,val"
    (default,) = client(cwd).get_run(bundled.info.run_id).inputs.dataset_inputs  # null train_files: the bundled file
    assert json.loads(default.dataset.source)["uri"] == default_instruction_file()
    assert json.loads(default.dataset.profile)["rows"] == 120
    # the data module's counts are params of the run, not one-point metric charts
    assert small.data.params["data/train_examples"] == "16" and small.data.params["data/val_examples"] == "16"
    assert not [k for k in small.data.metrics if k.startswith("data/")]


def test_run_name_from_the_yaml_is_kept(tmp_path, monkeypatch):
    from lightning_post.trainer_cli import cli_main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "named.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"logger": {"class_path": "lightning_post.tracking.MLflowLogger",
                                                             "init_args": {"run_name": "from-yaml"}}}}))
    cli = cli_main(["--config", str(CONFIGS / "sft/tiny.yaml"), "--config", str(config)], run=False)
    assert cli.trainer.logger._run_name == "from-yaml"
    assert cli.trainer.logger._experiment_name == "sft"
    cli = cli_main(["--config", str(CONFIGS / "sft/tiny.yaml")], run=False)
    assert NAME.match(cli.trainer.logger._run_name), cli.trainer.logger._run_name


def test_commands_outside_training_get_readable_names(tmp_path):
    from lightning_post.tracking import log_run

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    out = tmp_path / "out"
    out.mkdir()
    ids = [log_run(uri, "evaluate", None, {"method": "evaluate", "model": "exports/dpo/model"}, {}, {}, out),
           log_run(uri, "abtest", None, {"method": "abtest", "model_a": "smollm2-135m-instruct",
                                         "model_b": "/x/exports/dpo/model"}, {}, {}, out),
           log_run(uri, "evaluate", "mine", {"method": "evaluate"}, {}, {}, out)]
    names = [client(tmp_path).get_run(i).info.run_name for i in ids]
    assert re.fullmatch(r"evaluate-\d{6}-\d{6}-dpo-[0-9a-f]{4}", names[0]), names
    assert re.fullmatch(r"abtest-\d{6}-\d{6}-smollm2-135m-instruct-vs-dpo-[0-9a-f]{4}", names[1]), names
    assert names[2] == "mine"
